"""Rényi-DP accounting for DP-FedAvg's Gaussian mechanism.

Each round releases the mean of m clipped updates plus N(0, (z·C/m)²) noise: a Gaussian
mechanism with noise multiplier z (sensitivity C/m of the mean when one silo's update is
replaced, which is why the std scales as z·C/m). Over T rounds the RDP adds up, and RDP converts
to (ε, δ)-DP:

* q = 1 (every silo every round): RDP(α) = α / (2z²) for every order α > 1, exactly
  (Mironov, 2017, "Rényi Differential Privacy", Proposition 7).
* q < 1 (silos sampled with probability q): the sampled Gaussian mechanism's RDP at integer
  orders α ≥ 2 (Mironov, Talwar & Zhang, 2019, "Rényi Differential Privacy of the Sampled
  Gaussian Mechanism", Section 3.3):
      RDP(α) = log Σ_{k=0..α} C(α,k)·(1−q)^(α−k)·q^k·exp((k² − k)/(2z²)) / (α − 1).
  The analysis assumes Poisson sampling; fl_ray's coordinator samples a fixed-size subset, so
  for q < 1 the figure is the standard approximation, not a proof.
* Conversion: ε = min_α [T·RDP(α) + log(1/δ)/(α − 1)] (Mironov, 2017, Proposition 3). This is
  the classic, slightly conservative conversion.

The privacy unit is one silo's whole contribution (user-level DP in McMahan et al., 2018).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# Fractional orders help when ε is small; large ones when z is small (Opacus uses a similar grid).
DEFAULT_ORDERS: tuple[float, ...] = tuple(
    [1.0 + x / 10.0 for x in range(1, 100)] + [float(a) for a in range(11, 64)] + [128.0, 256.0]
)


def rdp_gaussian(alpha: float, noise_multiplier: float) -> float:
    """RDP of one Gaussian mechanism at order α: α / (2z²)."""
    return alpha / (2.0 * noise_multiplier**2)


def rdp_sampled_gaussian(alpha: int, sample_rate: float, noise_multiplier: float) -> float:
    """RDP of one sampled Gaussian mechanism at an integer order α ≥ 2 (exact, log-sum-exp)."""
    q, z = sample_rate, noise_multiplier
    if q == 1.0:
        return rdp_gaussian(alpha, z)
    if q == 0.0:
        return 0.0
    logs = [
        math.lgamma(alpha + 1) - math.lgamma(k + 1) - math.lgamma(alpha - k + 1)
        + (alpha - k) * math.log1p(-q) + k * math.log(q) + (k * k - k) / (2.0 * z * z)
        for k in range(alpha + 1)
    ]  # fmt: skip
    top = max(logs)
    return (top + math.log(sum(math.exp(v - top) for v in logs))) / (alpha - 1)


def epsilon(
    sample_rate: float,
    noise_multiplier: float,
    steps: int,
    delta: float,
    orders: Sequence[float] = DEFAULT_ORDERS,
) -> tuple[float, float]:
    """(ε, best order α) after ``steps`` rounds of the (sampled) Gaussian mechanism at δ."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if not 0 <= sample_rate <= 1:
        raise ValueError(f"sample_rate must be in [0, 1], got {sample_rate}")
    if steps == 0 or sample_rate == 0:
        return 0.0, float("nan")
    if noise_multiplier <= 0:
        return math.inf, float("nan")
    if sample_rate < 1.0:  # the exact formula is for integer orders
        orders = [a for a in orders if a >= 2 and float(a).is_integer()]
    best = (math.inf, float("nan"))
    for alpha in orders:
        if alpha <= 1:
            continue
        if sample_rate == 1.0:
            rdp = rdp_gaussian(alpha, noise_multiplier)
        else:
            rdp = rdp_sampled_gaussian(int(alpha), sample_rate, noise_multiplier)
        eps = steps * rdp + math.log(1.0 / delta) / (alpha - 1.0)
        if eps < best[0]:
            best = (eps, float(alpha))
    return best


__all__ = ["DEFAULT_ORDERS", "epsilon", "rdp_gaussian", "rdp_sampled_gaussian"]
