# CTest `source_scan`: only the kernel layer (kernels/) touches tensor memory. Fails when a file
# under autograd/, optim/ or nn/ uses data<T>(), raw_data(), memcpy, memset or a storage's
# ->data() beyond the allow-list below.
#   cmake -DROOT=<source dir> -P tests/source_scan.cmake
if(NOT ROOT)
  message(FATAL_ERROR "source_scan: pass -DROOT=<source dir>")
endif()

set(tokens "data<" "raw_data(" "memcpy" "memset" "->data()")
# file|token|how many occurrences are allowed, and why:
set(allowed
  # The accessors themselves: Tensor::data<T>() (its dtype error message), raw_data() and the
  # storage reads they are written with.
  "autograd/tensor.h|data<|1"
  "autograd/tensor.h|raw_data(|1"
  "autograd/tensor.h|->data()|1"
  "autograd/tensor.cpp|raw_data(|1"
  "autograd/tensor.cpp|->data()|1"
  # The bridge that turns a tensor into kernel arguments (kern::View, element 0).
  "autograd/kernel_bridge.h|raw_data(|1"
  # safetensors file I/O: copies between file buffers and tensors, owned by another work stream
  # (examples/train, CLI); it is byte serialisation, not tensor math. To move into the kernel
  # layer's copy_bytes like optimizer.cpp's state_dict did.
  "autograd/safetensors.cpp|data<|999"
  "autograd/safetensors.cpp|raw_data(|999"
  "autograd/safetensors.cpp|memcpy|999"
  "autograd/safetensors.cpp|memset|999"
)

file(GLOB_RECURSE files RELATIVE ${ROOT}
     ${ROOT}/autograd/*.h ${ROOT}/autograd/*.cpp ${ROOT}/optim/*.h ${ROOT}/optim/*.cpp ${ROOT}/nn/*.h ${ROOT}/nn/*.cpp)
list(LENGTH files n_files)
if(n_files LESS 20)
  message(FATAL_ERROR "source_scan: only ${n_files} files found under ${ROOT}; wrong ROOT?")
endif()
set(failures "")
foreach(f IN LISTS files)
  # One list entry per line: semicolons (list separators to CMake) are masked first.
  file(READ ${ROOT}/${f} text)
  string(REPLACE ";" "<semicolon>" text "${text}")
  string(REPLACE "[" "<lb>" text "${text}")
  string(REPLACE "]" "<rb>" text "${text}")
  string(REPLACE "\n" ";" lines "${text}")
  foreach(token IN LISTS tokens)
    set(count 0)
    set(where "")
    set(line_no 0)
    foreach(line IN LISTS lines)
      math(EXPR line_no "${line_no} + 1")
      string(FIND "${line}" "${token}" at)
      if(NOT at EQUAL -1)
        math(EXPR count "${count} + 1")
        string(REPLACE "<semicolon>" ";" shown "${line}")
        string(REPLACE "<lb>" "[" shown "${shown}")
        string(REPLACE "<rb>" "]" shown "${shown}")
        string(APPEND where "\n    ${f}:${line_no}: ${shown}")
      endif()
    endforeach()
    if(count EQUAL 0)
      continue()
    endif()
    set(limit 0)
    foreach(entry IN LISTS allowed)
      string(REPLACE "|" ";" parts "${entry}")
      list(GET parts 0 af)
      list(GET parts 1 at)
      list(GET parts 2 an)
      if(af STREQUAL f AND at STREQUAL token)
        set(limit ${an})
      endif()
    endforeach()
    if(count GREATER limit)
      string(APPEND failures "\n  '${token}' ${count} times in ${f} (allowed: ${limit}):${where}")
    endif()
  endforeach()
endforeach()
if(failures)
  message(FATAL_ERROR "source_scan: tensor memory touched outside the kernel layer (kernels/). Add a kernel to "
                      "kernels/kernels.h and call it through autograd/kernel_bridge.h instead:${failures}")
endif()
message(STATUS "source_scan: ${n_files} files under autograd/, optim/, nn/ clean")
