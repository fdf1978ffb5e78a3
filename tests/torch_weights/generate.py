#!/usr/bin/python3
"""Reference for tests/test_weights.cpp, run offline with Debian's python3-torch:
    /usr/bin/python3 tests/torch_weights/generate.py
Writes weights.safetensors (a torch state_dict of a bidirectional 2-layer LSTM and a GRU, float64,
under PyTorch's own names, in the safetensors format written by hand: the `safetensors` package is
not needed) and expected.json (an input, the modules' outputs, and the state_dict keys and shapes
torch expects, so the test can check that what tapegrad writes loads with strict=True)."""
import json
import os
import struct

import numpy as np
import torch

here = os.path.dirname(os.path.abspath(__file__))
torch.manual_seed(0)


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
        self.gru = torch.nn.GRU(3, 4)


m = Model().double()
x = torch.randn(3, 2, 3, dtype=torch.float64)  # [T, B, input]: time-major, torch's default
with torch.no_grad():
    lstm_out, (lstm_h, lstm_c) = m.lstm(x)
    gru_out, gru_h = m.gru(x)

state = m.state_dict()
header, offset, blobs = {}, 0, []
for name in sorted(state):
    a = state[name].contiguous().numpy().astype("<f8")
    header[name] = {"dtype": "F64", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
    offset += a.nbytes
    blobs.append(a.tobytes())
text = json.dumps(header, separators=(",", ":"))
text += " " * ((8 - (8 + len(text)) % 8) % 8)
with open(os.path.join(here, "weights.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(text)) + text.encode() + b"".join(blobs))

flat = lambda t: [float(v) for v in t.reshape(-1).tolist()]
expected = {
    "torch_version": torch.__version__,
    "input_shape": list(x.shape), "input": flat(x),
    "lstm_output": flat(lstm_out), "lstm_h_n": flat(lstm_h), "lstm_c_n": flat(lstm_c),
    "gru_output": flat(gru_out), "gru_h_n": flat(gru_h),
    "state_dict": {k: list(v.shape) for k, v in state.items()},
}
with open(os.path.join(here, "expected.json"), "w") as f:
    json.dump(expected, f, indent=1)
print("wrote", len(state), "tensors,", offset, "bytes of data")
