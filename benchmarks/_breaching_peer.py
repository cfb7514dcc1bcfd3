"""Run breaching's attack on one observed gradient (run by benchmarks/gradient.py in breaching's own venv).

Reads an .npz written by the benchmark (architecture spec, parameters, gradient, batch size, attack,
iterations), runs breaching's optimisation attack with its own configuration (only the iteration
count is changed), and writes the reconstruction and the wall time to the output .npz.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch


def main(inp: str, out: str) -> None:
    import breaching
    from breaching.attacks.auxiliaries import regularizers
    from omegaconf import OmegaConf

    from invguard.models.nets import build

    tv_forward = regularizers.TotalVariation.forward

    def grey_tv(
        self, tensor, *args, **kwargs
    ):  # breaching's TV is written for 3 channels: grey as RGB, same mean
        if tensor.shape[1] == 1:
            tensor = tensor.repeat(1, 3, 1, 1)
        return tv_forward(self, tensor, *args, **kwargs)

    regularizers.TotalVariation.forward = grey_tv
    torch.set_num_threads(1)
    z = np.load(inp, allow_pickle=False)
    spec = json.loads(str(z["spec"]))
    attack = str(z["attack"])
    n_params = int(z["n_params"])
    model = build(spec).eval()
    params = [torch.as_tensor(z[f"p{i}"]) for i in range(n_params)]
    grads = [torch.as_tensor(z[f"g{i}"]) for i in range(n_params)]
    cfg = breaching.get_config(overrides=[f"attack={attack}"])
    cfg.attack.optim.max_iterations = int(z["iterations"])
    cfg.attack.optim.callback = 10**9
    if "seed" in z:
        torch.manual_seed(int(z["seed"]))
    setup = dict(device=torch.device("cpu"), dtype=torch.float)
    attacker = breaching.attacks.prepare_attack(model, torch.nn.CrossEntropyLoss(), cfg.attack, setup)
    shape = list(spec["input_shape"])
    meta = OmegaConf.create(
        dict(
            shape=shape,
            mean=[0.0] * shape[0],
            std=[1.0] * shape[0],
            modality="vision",
            classes=spec["num_classes"],
        )
    )
    payload = [dict(parameters=params, buffers=None, metadata=meta)]
    labels = None if int(z["known_labels"]) == 0 else torch.as_tensor(z["labels"])
    shared = [
        dict(
            gradients=grads,
            buffers=None,
            metadata=dict(num_data_points=int(z["batch"]), labels=labels, local_hyperparams=None),
        )
    ]
    t0 = time.perf_counter()
    rec, _ = attacker.reconstruct(payload, shared, {}, dryrun=False)
    wall = time.perf_counter() - t0
    np.savez(out, data=rec["data"].detach().numpy(), labels=rec["labels"].detach().numpy(), wall=wall)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
