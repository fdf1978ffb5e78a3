# A third opinion for bench_onednn_lstm check (which compares oneDNN with tapegrad): the same
# inputs through PyTorch. TG_CHECK_DUMP=/tmp/c.json bench_onednn_lstm check; /usr/bin/python3 this /tmp/c.json
import json, sys, torch
d = json.load(open(sys.argv[1]))
V,E,H,T,B = 11,5,7,6,3
emb = torch.nn.Embedding(V,E); lstm = torch.nn.LSTM(E,H,batch_first=True); fc = torch.nn.Linear(H,1)
with torch.no_grad():
    emb.weight.copy_(torch.tensor(d['emb']).view(V,E))
    lstm.weight_ih_l0.copy_(torch.tensor(d['w_ih']).view(4*H,E)); lstm.weight_hh_l0.copy_(torch.tensor(d['w_hh']).view(4*H,H))
    lstm.bias_ih_l0.copy_(torch.tensor(d['b_ih'])); lstm.bias_hh_l0.copy_(torch.tensor(d['b_hh']))
    fc.weight.copy_(torch.tensor(d['fc_w']).view(1,H)); fc.bias.copy_(torch.tensor(d['fc_b']))
x = torch.tensor(d['tokens']).view(B,T); y = torch.tensor(d['labels'], dtype=torch.float32)
_, (h, c) = lstm(emb(x))
loss = torch.nn.functional.binary_cross_entropy_with_logits(fc(h[-1]).view(-1), y)
loss.backward()
print('loss', loss.item())
for name, p in [('emb.weight', emb.weight), ('weight_ih', lstm.weight_ih_l0), ('weight_hh', lstm.weight_hh_l0),
                ('bias_ih', lstm.bias_ih_l0), ('fc.weight', fc.weight), ('fc.bias', fc.bias)]:
    print(name, 'grad[:4]', [round(v, 7) for v in p.grad.flatten()[:4].tolist()])
