"""Ceiling on clip/high_frac at the warm start: share of valid tokens with A>0 and p_behav < 1/(1+eps_high)
(only those can ever reach r > 1+eps_high), per task. One batch of P*G = 128 per seed, 4 seeds."""
import os

import torch

from xxpo_lab import Config
from xxpo_lab.measure import sample_batch

if __name__ == "__main__":
    os.environ.setdefault("XXPO_CACHE", "/tmp/dapo_probe/cache")
    torch.set_num_threads(1)
    for kw in [dict(task="reverse"), dict(task="countdown"), dict(task="countdown", difficulty=2),
               dict(task="reverse", warm_start_acc=0.2)]:
        out = []
        for seed in range(4):
            st, b = sample_batch(Config(loss="dapo", **kw), seed=seed)
            m = b.mask > 0
            p = b.behav_logp.exp()
            pos = m & (b.adv > 0)
            n = m.sum().item()
            out.append([pos.sum().item() / n] + [(pos & (p < 1 / (1 + e))).sum().item() / n for e in (0.2, 0.28, 0.4)]
                       + [(m & (p < 0.5)).sum().item() / n])
        t = torch.tensor(out).mean(0).tolist()
        print(kw, "A>0: {:.3f}  A>0&p<1/1.2: {:.3f}  A>0&p<1/1.28: {:.3f}  A>0&p<1/1.4: {:.3f}  all p<0.5: {:.3f}".format(*t))
