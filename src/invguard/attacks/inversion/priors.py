"""Image priors an inversion attacker builds from *public* data only.

- :class:`PixelSpace`: raw pixels in [0, 1], with total-variation and L2 priors (Mahendran &
  Vedaldi, "Understanding deep image representations by inverting them", CVPR 2015).
- :class:`PCASpace`: the public data's mean and principal components (a Gaussian pixel prior from
  public statistics); it can express classes the public data does not hold.
- :class:`LatentSpace`: the decoder of a small VAE (Kingma & Welling 2014) trained on the public
  split, the generative prior of GMI (Zhang et al., "The Secret Revealer", CVPR 2020). A generator
  trained on other classes cannot produce an unseen class.

Every space maps search parameters ``theta`` (n, dim) to inputs (n, *input_shape) in numpy and in
torch, samples from its prior, encodes inputs back, and scores a prior penalty per row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from invguard.storage import TRAINING_CODE, cached


def total_variation_t(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation per image: the sum of absolute differences of neighbouring pixels
    (a per-pixel weight, so one setting works for 8x8 and 28x28); 0 for non-images."""
    if x.dim() != 4:
        return torch.zeros(x.shape[0])
    dh = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().sum(dim=(1, 2, 3))
    dw = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().sum(dim=(1, 2, 3))
    return dh + dw


class Space:
    """A search space: parameters -> inputs, with a prior."""

    name = "space"
    dim: int
    input_shape: tuple[int, ...]

    def decode(self, theta: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out: np.ndarray = self.decode_t(torch.as_tensor(theta, dtype=torch.float32)).double().numpy()
        return out

    def decode_t(self, theta: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def penalty(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out: np.ndarray = (
                self.penalty_t(
                    torch.as_tensor(theta, dtype=torch.float32), torch.as_tensor(x, dtype=torch.float32)
                )
                .double()
                .numpy()
            )
        return out

    def penalty_t(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def encode(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def project(self, theta: torch.Tensor) -> None:
        """Keep parameters in their valid range after a step (in place)."""

    def scale(self) -> float:
        """A natural step size for zeroth-order search in this space."""
        return 1.0


class PixelSpace(Space):
    name = "pixel"

    def __init__(self, input_shape: tuple[int, ...], *, tv: float, l2: float) -> None:
        self.input_shape = tuple(input_shape)
        self.dim = int(np.prod(input_shape))
        self.tv, self.l2 = float(tv), float(l2)

    def decode_t(self, theta: torch.Tensor) -> torch.Tensor:
        return theta.clamp(0.0, 1.0).reshape(theta.shape[0], *self.input_shape)

    def penalty_t(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.tv * total_variation_t(x) + self.l2 * (x.reshape(x.shape[0], -1) ** 2).sum(dim=1)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        out: np.ndarray = rng.uniform(0.0, 0.5, size=(n, self.dim))
        return out

    def encode(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64).reshape(x.shape[0], -1)

    def project(self, theta: torch.Tensor) -> None:
        with torch.no_grad():
            theta.clamp_(0.0, 1.0)

    def scale(self) -> float:
        return 0.1


class PCASpace(Space):
    """``x = clip(mean + (u * std) @ components)``, ``u`` whitened (a standard normal under the prior)."""

    name = "pca"

    def __init__(self, X_public: np.ndarray, *, components: int, weight: float, tv: float = 0.0) -> None:
        X = np.asarray(X_public, dtype=np.float64)
        self.input_shape = tuple(X.shape[1:])
        flat = X.reshape(X.shape[0], -1)
        self.mean = flat.mean(axis=0)
        _, s, vt = np.linalg.svd(flat - self.mean, full_matrices=False)
        k = int(max(1, min(components, vt.shape[0], flat.shape[1])))
        self.components = vt[:k]
        self.std = np.maximum(s[:k] / np.sqrt(max(1, flat.shape[0] - 1)), 1e-6)
        self.dim = k
        self.weight, self.tv = float(weight), float(tv)
        self._basis_t = torch.as_tensor(self.components * self.std[:, None], dtype=torch.float32)
        self._mean_t = torch.as_tensor(self.mean, dtype=torch.float32)

    def decode_t(self, theta: torch.Tensor) -> torch.Tensor:
        flat = self._mean_t + theta @ self._basis_t
        return flat.clamp(0.0, 1.0).reshape(theta.shape[0], *self.input_shape)

    def penalty_t(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (theta**2).mean(dim=1) + self.tv * total_variation_t(x)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.standard_normal((n, self.dim))

    def encode(self, x: np.ndarray) -> np.ndarray:
        flat = np.asarray(x, dtype=np.float64).reshape(x.shape[0], -1) - self.mean
        out: np.ndarray = (flat @ self.components.T) / self.std
        return out

    def scale(self) -> float:
        return 0.5


class VAE(nn.Module):
    """A small fully connected VAE: input -> hidden -> (mu, logvar) -> hidden -> sigmoid output."""

    def __init__(self, input_shape: tuple[int, ...], latent_dim: int, hidden: int) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        d = int(np.prod(input_shape))
        self.enc = nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.ReLU())
        self.mu = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)
        self.dec = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, d), nn.Sigmoid())

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.dec(z).reshape(z.shape[0], *self.input_shape)
        return out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.enc(x)
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar


def train_vae(
    X: np.ndarray, *, latent_dim: int, hidden: int, epochs: int, seed: int, batch_size: int = 64
) -> VAE:
    """Train a VAE (binary cross-entropy + KL) with Adam; seeded and deterministic on CPU."""
    with torch.random.fork_rng(devices=[]):  # seeded without touching the global generator
        torch.manual_seed(seed)
        return _train_vae(
            X, latent_dim=latent_dim, hidden=hidden, epochs=epochs, seed=seed, batch_size=batch_size
        )


def _train_vae(
    X: np.ndarray, *, latent_dim: int, hidden: int, epochs: int, seed: int, batch_size: int
) -> VAE:
    vae = VAE(tuple(X.shape[1:]), latent_dim, hidden)
    Xt = torch.as_tensor(np.asarray(X, dtype=np.float32))
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    vae.train()
    for _ in range(epochs):
        perm = torch.randperm(Xt.shape[0], generator=g)
        for i in range(0, Xt.shape[0], batch_size):
            xb = Xt[perm[i : i + batch_size]]
            rec, mu, logvar = vae(xb)
            bce = nn.functional.binary_cross_entropy(rec, xb, reduction="sum") / xb.shape[0]
            kl = -0.5 * torch.sum(1 + logvar - mu**2 - logvar.exp()) / xb.shape[0]
            opt.zero_grad()
            (bce + kl).backward()  # type: ignore[no-untyped-call]
            opt.step()
    vae.eval()
    return vae


def generator_for(
    splits: Any, *, latent_dim: int, hidden: int, epochs: int, seed: int, cache_dir: Path | None
) -> VAE:
    """The VAE trained on ``splits.public`` only, cached in ``cache_dir`` by a hash of data and recipe."""
    pub = splits.public
    shape = tuple(pub.X.shape[1:])
    parts = {
        "latent": latent_dim,
        "hidden": hidden,
        "epochs": epochs,
        "seed": seed,
        "data": splits.dataset.fingerprint(),
        "public": pub.hash,
    }

    def load(path: Path) -> VAE:
        vae = VAE(shape, latent_dim, hidden)
        vae.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        vae.eval()
        return vae

    def save(vae: VAE, path: Path) -> None:
        torch.save(vae.state_dict(), path)

    return cached(
        cache_dir,
        "inversion-vae",
        parts,
        make=lambda: train_vae(pub.X, latent_dim=latent_dim, hidden=hidden, epochs=epochs, seed=seed),
        load=load,
        save=save,
        code=(*TRAINING_CODE, __name__),
    )


class LatentSpace(Space):
    """The latent space of a generator trained on public data, with a standard normal prior."""

    name = "latent"

    def __init__(self, vae: VAE, *, weight: float) -> None:
        self.vae = vae
        for p in vae.parameters():
            p.requires_grad_(False)
        self.input_shape = vae.input_shape
        self.dim = int(vae.mu.out_features)
        self.weight = float(weight)

    def decode_t(self, theta: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(theta)

    def penalty_t(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (theta**2).mean(dim=1)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.standard_normal((n, self.dim))

    def encode(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            h = self.vae.enc(torch.as_tensor(np.asarray(x, dtype=np.float32)))
            out: np.ndarray = self.vae.mu(h).double().numpy()
        return out

    def scale(self) -> float:
        return 0.5
