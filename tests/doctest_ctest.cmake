# One CTest test per test source file (parallel under ctest -j, named failures in the summary).
function(tg_add_doctest_files target)
  file(GLOB sources ${CMAKE_CURRENT_SOURCE_DIR}/test_*.cpp)
  foreach(src ${sources})
    get_filename_component(name ${src} NAME_WE)
    add_test(NAME ${name} COMMAND ${target} --source-file=*${name}.cpp --no-intro)
  endforeach()
endfunction()
