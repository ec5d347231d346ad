"""The EqProp weight update of one trial: its learning-rate factors, its two paths, its records.

dW is symmetric and zero between inputs, so only its columns of non-input neurons (N x H) are
computed. The torch path forms them as one matrix product and mirrors the input rows
afterwards; the compiled path (``c_kernel.FusedUpdate``) computes each connection once with
the same float32 operations, on the kernel's threads, where it gives the torch path's bits.
"""

from __future__ import annotations

import math

import torch

from eqp.config.settings import TrialSettings
from eqp.engines.backends import c_kernel
from eqp.engines.minimiser import Minimiser
from eqp.model.network import Network, rho

# The weight update: "auto" takes the compiled one where it gives the torch path's bits
UPDATES = ("auto", "torch")


class WeightUpdate:
    """The update of ``net`` after each batch, which ``engine`` (the Euler engine that settles
    on ``net``; a converged settler's inner one) is told about.

    Its blocks, counts and learning-rate factors are public, for the ensemble's batched
    update, which stacks them over the members.
    """

    def __init__(
        self,
        net: Network,
        engine: Minimiser,
        settings: TrialSettings,
        threads: int = 1,
        update: str = "auto",
    ) -> None:
        self.net = net
        self.engine = engine
        self.settings = settings
        self.threads = max(1, threads)
        n_in = net.n_inputs
        zeros = dict(dtype=torch.float32, device=net.weights.device)
        columns = (net.n_neurons, net.n_neurons - n_in)
        self.mask_columns = net.mask[:, n_in:].contiguous()
        # per layer pair: its block of the N x H columns, and its connection count
        self.pair_columns: list[tuple[slice, slice]] = []
        for k in range(net.n_pairs):
            rows, cols = net.pair_block(k)
            self.pair_columns.append((rows, slice(cols.start - n_in, cols.stop - n_in)))
        self.pair_counts = [float(net.mask[net.pair_block(k)].sum()) for k in range(net.n_pairs)]
        # per-layer rates: a factor on dW's columns and (the fix of quirk 3) on the biases;
        # None where one scalar rate scales both
        self.factor: torch.Tensor | None = None
        self.bias_factor: torch.Tensor | None = None
        if settings.per_layer_rates:
            factor = net.pair_learning_rate_matrix(settings.pair_learning_rates)
            self.factor = factor[:, n_in:].contiguous()
            if settings.correct_bias_quirk:
                self.bias_factor = self._layer_bias_factor(settings.pair_learning_rates)
        # |dW| summed over the current epoch's batches (N x H), reset by start_epoch
        self.epoch_abs = torch.zeros(columns, **zeros)
        self._compiled: c_kernel.FusedUpdate | None = None
        self._native: c_kernel.FusedUpdate | None = None
        self.choose(update)

    def choose(self, update: str) -> None:
        """Choose the weight update ("auto" or "torch", see UPDATES); ``name`` then says
        which one runs ("native" or "torch"). Both give the same bits."""
        if update not in UPDATES:
            raise ValueError(f"unknown update {update!r}; use one of {', '.join(UPDATES)}")
        if update == "torch":
            self._native = None
        elif self._compiled is None:
            self._compiled = self._native = self._native_update()
        else:
            self._native = self._compiled
        self.name = "native" if self._native is not None else "torch"

    def _native_update(self) -> c_kernel.FusedUpdate | None:
        """The compiled update where it gives the torch path's bits (fused CPU layout, float32,
        AVX2+FMA and torch's product measured to round the same), else None."""
        fused = getattr(self.engine, "fused", None)
        net = self.net
        if fused is None or net.weights.dtype != torch.float32:
            return None
        k = 2 * self.settings.batch_size
        if not c_kernel.update_matches_torch(net.n_neurons, k, net.n_inputs):
            return None
        # d is kept (for the per-layer rates' norms) in an N x H buffer laid out like the
        # torch path's dW, so that torch reduces the very same strided blocks
        self._record = torch.zeros_like(self.epoch_abs)
        pairs = [(k, k + 1) for k in range(net.n_pairs)]
        return c_kernel.FusedUpdate(net.mask, net.offsets, self.settings.batch_size, fused, pairs)

    def _layer_bias_factor(self, rates: tuple[float, ...]) -> torch.Tensor:
        """Bias of layer k+1 scaled by the rate of pair k (the fix of spec quirk 3)."""
        net = self.net
        factor = torch.ones(net.n_neurons, dtype=torch.float32, device=net.weights.device)
        offsets = net.offsets
        for k, rate in enumerate(rates):
            factor[offsets[k + 1] : offsets[k + 2]] = rate
        return factor

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The factors on dW's columns (N x H) and on the biases (N) as tensors: the scalar
        rate everywhere, or the per-layer rates (biases by 1 unless the quirk is fixed)."""
        if self.factor is None:
            rate = float(self.settings.learning_rate)
            return (
                torch.full_like(self.mask_columns, rate),
                torch.full_like(self.net.biases, rate),
            )
        bias = self.bias_factor
        return self.factor, torch.ones_like(self.net.biases) if bias is None else bias

    def apply(
        self, x: torch.Tensor, free: torch.Tensor, nudged: torch.Tensor, beta: float
    ) -> torch.Tensor:
        """Apply the EqProp update, add |dW| to ``epoch_abs`` (the compiled path: its upper
        triangle, see ``end_epoch``); return the per-layer rates."""
        net = self.net
        n_in = net.n_inputs
        inputs = rho(x.to(torch.float32))
        r_free = torch.cat([inputs, free], 1)
        r_nudged = torch.cat([inputs, nudged], 1)
        both = torch.cat([r_nudged, r_free], 0)
        signed = torch.cat([nudged, -free], 0)
        size = x.shape[0]
        d_biases = ((r_nudged - r_free) / beta).mean(0)
        if self._native is not None:
            rate = 0.0 if self.factor is not None else float(self.settings.learning_rate)
            self._native.apply(
                both,
                signed,
                beta,
                rate,
                self.engine.eps,
                net.weights,
                net.mask,
                self.factor,
                self._record,
                self.epoch_abs,
                self.threads,
            )
            rates = self._pair_rates(self._record)
            self._step_biases(d_biases)
            self.engine.forget_drive()
            return rates
        d_weights = (both.T @ signed).div_(beta).div_(size).mul_(self.mask_columns)
        rates = self._pair_rates(d_weights)
        columns = net.weights[:, n_in:]
        if self.factor is None:
            columns += float(self.settings.learning_rate) * d_weights
        else:
            columns += d_weights * self.factor
        self._step_biases(d_biases)
        net.weights[n_in:, :n_in] = net.weights[:n_in, n_in:].T
        self.engine.refresh()
        self.epoch_abs += d_weights.abs_()
        return rates

    def start_epoch(self) -> None:
        """Forget the last epoch's |dW| sums."""
        self.epoch_abs.zero_()

    def end_epoch(self, batches: int) -> torch.Tensor:
        """This epoch's mean |dW| (N x H columns), in ``epoch_abs`` itself.

        The compiled update sums the hidden x hidden block's upper triangle only; dW is
        symmetric, so the lower one is filled from it first (the same sums)."""
        if self._native is not None:
            hidden = self.epoch_abs[self.net.n_inputs :]
            hidden += hidden.triu(1).T
        self.epoch_abs /= batches
        return self.epoch_abs

    def _pair_rates(self, d_weights: torch.Tensor) -> torch.Tensor:
        """Per layer pair: the RMS of dW over its connections (norm over the block)."""
        return torch.stack(
            [
                torch.linalg.vector_norm(d_weights[rows, cols]) / math.sqrt(count)
                for (rows, cols), count in zip(self.pair_columns, self.pair_counts, strict=True)
            ]
        )

    def _step_biases(self, d_biases: torch.Tensor) -> None:
        if self.factor is None:
            self.net.biases += float(self.settings.learning_rate) * d_biases
        else:
            self.net.biases += d_biases if self.bias_factor is None else d_biases * self.bias_factor


def fold_into_mean(mean: torch.Tensor, epoch_abs: torch.Tensor, epoch: int) -> None:
    """Fold epoch ``epoch``'s mean |dW| into the running mean over epochs, in place (a
    trial's, or stacked members' with a leading axis)."""
    mean += (epoch_abs - mean) / epoch
