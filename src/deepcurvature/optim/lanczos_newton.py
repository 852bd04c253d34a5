"""Stochastic Lanczos Newton optimisers: saddle-free Newton and Gauss-Newton in a Krylov space.

Paper section 2.2 (Figure 1): each step takes the gradient ``g`` of a mini-batch, runs ``k``
Lanczos steps (full reorthogonalisation, :func:`deepcurvature.linalg.lanczos`) on the curvature
``C`` of a mini-batch started at ``g`` (so the Krylov space ``span(Q)`` contains ``g``) and moves
along

``d = -Q S diag(1 / f(theta)) S^T Q^T g  [- (g - Q Q^T g) / delta]``

where ``T = S diag(theta) S^T`` is the Lanczos tridiagonal matrix (``C Q ~ Q T``) and

* :class:`LanczosNewton` (``C`` = mini-batch Hessian): ``f(theta) = |theta| + delta``, the
  saddle-free Newton step of Dauphin et al. 2014 restricted to the Krylov space: directions of
  negative curvature are followed *downhill* instead of towards the saddle;
* :class:`LanczosGGN` (``C`` = mini-batch generalised Gauss-Newton):
  ``f(theta) = max(theta, 0) + delta``.

The bracketed term is the part of the gradient outside the Krylov space (``outside="scale"``, the
default: the same damped step for directions of unknown, i.e. zero, curvature, so ``d`` is
exactly the damped Newton step of the rank-``k`` curvature model ``Q f(T) Q^T``); it is zero when
the basis was just built from the current gradient and matters only when a cached basis is reused
(``refresh_every > 1``), where ``outside="drop"`` would ignore every new gradient direction.

The update is ``p <- p - lr * v`` with ``v = d`` (or the momentum buffer ``v <- mu v + d``). The
damping is ``delta = damping_ratio * lr`` (the paper keeps ``delta = 10 alpha``; it follows a
learning-rate schedule) unless ``damping`` is given: a number, or ``"rmt"``, Granziol &
Baskerville's random-matrix damping learner (:class:`deepcurvature.linalg.ShrinkageDamping`):
the batch curvature is shrunk towards its mean eigenvalue, ``(1 - rho) C + rho (tr C / P) I``,
with the Ledoit-Wolf intensity ``rho`` learned from the batch-to-batch variance of ``C V`` for a
few fixed probes ``V``, which is the damping ``delta = rho / (1 - rho) tr C / P`` with the step
scaled by ``1 - rho``. Weight decay ``lam`` is part of the
objective: its gradient ``lam p`` is added to ``g`` and its curvature ``lam I`` to ``C``.

How the optimiser gets the batch (``train_network`` calls ``loss.backward(); optimizer.step()``):

* a forward pre-hook on the model records the input ``x`` of each training forward pass (model in
  training mode, gradients enabled), a forward hook records the output tensor;
* a global module forward pre-hook (``torch.nn.modules.module.register_module_forward_pre_hook``)
  records the targets ``y`` when an ``nn.Module`` loss (``nn.CrossEntropyLoss()``...) is called
  on that very output tensor as ``loss(output, y)``; with ``loss_fn=None`` that module is also the
  loss whose curvature is taken (``nn.CrossEntropyLoss()`` when none was seen);
* :meth:`set_batch` gives ``(x, y)`` explicitly instead (needed for a functional loss such as
  ``F.cross_entropy``); it wins over the hooks for the next step.

The hooks hold the optimiser weakly and are removed by :meth:`remove_hooks` (``train_network``
calls it at the end) or when the optimiser is garbage collected.

State (``self.state``, so ``state_dict``/``load_state_dict`` round-trip, also through
``torch.load(weights_only=True)``): the step counter, the momentum buffers, and the cached Krylov
basis (per parameter its ``(numel, m)`` slice of ``Q``) with the Ritz values ``theta`` and
eigenvectors ``S`` of ``T`` (in the first parameter's state), all stored in the parameters' dtype.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from ..linalg.lanczos import lanczos, tridiagonal_eigh
from ..linalg.shrinkage import ShrinkageDamping
from ..operators import ggn, hessian, select_parameters
from ..operators.retained import retained_hessian
from .validation import check_hyperparameters

__all__ = ["LanczosGGN", "LanczosNewton"]

OUTSIDE_MODES = ("scale", "drop")
BN_MODES = ("train", "eval")


def _positive_int(owner: str, name: str, value: Any, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _leading(value: Any, n: int) -> Any:
    """The first ``n`` samples of a batch part: a tensor, or a tuple/list/dict of them."""
    if isinstance(value, torch.Tensor):
        return value[:n]
    if isinstance(value, (tuple, list)):
        return type(value)(_leading(v, n) for v in value)
    if isinstance(value, dict):
        return {k: _leading(v, n) for k, v in value.items()}
    return value


def _detached(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (tuple, list)):
        return type(value)(_detached(v) for v in value)
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


class _KrylovNewton(torch.optim.Optimizer):
    """Shared machinery of :class:`LanczosNewton` and :class:`LanczosGGN`."""

    curvature = "curvature"

    def __init__(
        self,
        model: nn.Module,
        lr: float = 0.1,
        *,
        damping: float | str | None = None,
        damping_ratio: float = 10.0,
        lanczos_steps: int = 20,
        rmt_probes: int = 4,
        rmt_decay: float = 0.9,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        outside: str = "scale",
        refresh_every: int = 1,
        curvature_batch_size: int | None = None,
        curvature_data: Iterable[Any] | None = None,
        loss_fn: Callable[..., torch.Tensor] | None = None,
        params: Any = None,
        bn_mode: str = "train",
        dtype: torch.dtype | None = None,
    ) -> None:
        name = type(self).__name__
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"{name} needs the model (an nn.Module), not its parameters: "
                f"{name}(model, lr=...) or build_optimizer({name!r}, model, ...)"
            )
        if isinstance(damping, str) and damping != "rmt":
            raise ValueError(
                f"{name}: damping must be a positive number, None (damping_ratio * lr) or "
                f"'rmt' (learned by linear shrinkage), got {damping!r}"
            )
        check_hyperparameters(
            name,
            dict(
                lr=lr,
                damping=damping,
                damping_ratio=damping_ratio,
                momentum=momentum,
                weight_decay=weight_decay,
            ),
        )
        if lr is None:
            raise ValueError(f"{name}: lr must be a positive number, got None")
        if damping_ratio is None or not float(damping_ratio) > 0:
            raise ValueError(f"{name}: damping_ratio must be positive, got {damping_ratio!r}")
        lanczos_steps = _positive_int(name, "lanczos_steps", lanczos_steps)
        rmt_probes = _positive_int(name, "rmt_probes", rmt_probes)
        if isinstance(rmt_decay, bool) or not isinstance(rmt_decay, (int, float)):
            raise ValueError(f"{name}: rmt_decay must be a number in (0, 1], got {rmt_decay!r}")
        if not 0 < rmt_decay <= 1:
            raise ValueError(f"{name}: rmt_decay must be in (0, 1], got {rmt_decay!r}")
        refresh_every = _positive_int(name, "refresh_every", refresh_every)
        curvature_batch_size = _positive_int(
            name, "curvature_batch_size", curvature_batch_size, allow_none=True
        )
        if outside not in OUTSIDE_MODES:
            raise ValueError(f"{name}: outside must be one of {OUTSIDE_MODES}, got {outside!r}")
        if bn_mode not in BN_MODES:
            raise ValueError(f"{name}: bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"{name}: dtype must be a floating torch dtype or None, got {dtype}")
        if loss_fn is not None and not callable(loss_fn):
            raise ValueError(f"{name}: loss_fn must be callable loss_fn(output, targets)")
        self.param_names = select_parameters(model, params)
        lookup = dict(model.named_parameters())
        selected = [lookup[n] for n in self.param_names]
        defaults = dict(
            lr=lr,
            damping=damping,
            damping_ratio=float(damping_ratio),
            lanczos_steps=lanczos_steps,
            rmt_probes=rmt_probes,
            rmt_decay=float(rmt_decay),
            momentum=momentum,
            weight_decay=weight_decay,
            outside=outside,
            refresh_every=refresh_every,
            curvature_batch_size=curvature_batch_size,
        )
        super().__init__(selected, defaults)
        if len(self.param_groups) != 1:
            raise ValueError(f"{name} takes one parameter group (its Krylov space is global)")
        self.model = model
        self.loss_fn = loss_fn
        self.bn_mode = bn_mode
        self.dtype = dtype
        self.curvature_data = curvature_data
        self._curvature_iter: Iterator[Any] | None = None
        self._explicit: tuple[Any, Any] | None = None
        self._seen_input: Any = None
        self._seen_output: torch.Tensor | None = None
        self._captured: tuple[Any, Any, Callable] | None = None
        self._handles: list = []
        self._learner: ShrinkageDamping | None = None
        self.add_hooks()

    # ------------------------------------------------------------------ batches
    def set_batch(self, x: Any, y: Any) -> None:
        """Give the batch ``(x, y)`` of the next :meth:`step` explicitly (wins over the hooks)."""
        self._explicit = (_detached(x), _detached(y))

    def add_hooks(self) -> None:
        """Register the hooks recording the batch (done by the constructor)."""
        if self._handles:
            return
        ref = weakref.ref(self)

        def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
            opt = ref()
            if opt is None or not (module.training and torch.is_grad_enabled()):
                return
            if kwargs and not args:
                opt._seen_input = _detached(dict(kwargs))
            else:
                opt._seen_input = _detached(args[0] if len(args) == 1 else tuple(args))
            opt._seen_output = None

        def post(module: nn.Module, args: tuple, output: Any) -> None:
            opt = ref()
            if opt is None or opt._seen_input is None or not isinstance(output, torch.Tensor):
                return
            opt._seen_output = output

        def loss_pre(module: nn.Module, args: tuple) -> None:
            opt = ref()
            if opt is None or opt._seen_output is None or len(args) < 2:
                return
            if args[0] is opt._seen_output:
                opt._captured = (opt._seen_input, _detached(args[1]), module)
                opt._seen_input = opt._seen_output = None

        self._handles = [
            self.model.register_forward_pre_hook(pre, with_kwargs=True),
            self.model.register_forward_hook(post),
            nn.modules.module.register_module_forward_pre_hook(loss_pre),
        ]
        weakref.finalize(self, _remove_all, list(self._handles))

    def remove_hooks(self) -> None:
        """Remove the hooks; afterwards only :meth:`set_batch` gives batches."""
        _remove_all(self._handles)
        self._handles = []
        self._seen_input = self._seen_output = self._captured = None

    def _gradient_batch(self) -> tuple[Any, Any, Callable]:
        name = type(self).__name__
        if self._explicit is not None:
            x, y = self._explicit
            return x, y, self.loss_fn or nn.CrossEntropyLoss()
        if self._captured is not None:
            x, y, seen_loss = self._captured
            return x, y, self.loss_fn or seen_loss
        raise RuntimeError(
            f"{name} has no batch for its curvature: call opt.set_batch(x, y) before step(), "
            "or compute the loss with an nn.Module loss (e.g. nn.CrossEntropyLoss()) applied to "
            "the output of the model in training mode so that the hooks record x and y"
        )

    def _next_curvature_batch(self) -> tuple[Any, Any]:
        for _ in range(2):
            if self._curvature_iter is None:
                self._curvature_iter = iter(self.curvature_data)
            try:
                x, y = next(self._curvature_iter)
                return x, y
            except StopIteration:
                self._curvature_iter = None
        raise ValueError(f"{type(self).__name__}: curvature_data yields no batch")

    def _curvature_batch(self) -> tuple[Any, Any, Callable]:
        if self.curvature_data is None:
            x, y, loss_fn = self._gradient_batch()
        else:
            x, y = self._next_curvature_batch()
            loss_fn = self.loss_fn
            if loss_fn is None:
                loss_fn = self._captured[2] if self._captured is not None else None
            loss_fn = loss_fn or nn.CrossEntropyLoss()
        n = self.param_groups[0]["curvature_batch_size"]
        if n is not None:
            size = int(y.shape[0]) if isinstance(y, torch.Tensor) else None
            if size is not None and n > size:
                raise ValueError(
                    f"{type(self).__name__}: curvature_batch_size={n} is larger than the batch "
                    f"({size} samples): lower curvature_batch_size or raise the batch size"
                )
            x, y = _leading(x, n), _leading(y, n)
        return x, y, loss_fn

    # ------------------------------------------------------------------ curvature
    def _shift(self, theta: torch.Tensor, delta: float) -> torch.Tensor:
        """``f(theta)``: ``|theta| + delta`` (Hessian) or ``max(theta, 0) + delta`` (GGN)."""
        if self.curvature == "hessian":
            return theta.abs() + delta
        return theta.clamp_min(0) + delta

    def _operator(self, x: Any, y: Any, loss_fn: Callable) -> Any:
        """The curvature of the batch (for the Hessian with its gradient graph kept).

        The ``k`` Lanczos products of the Hessian share one forward pass
        (:func:`~deepcurvature.operators.retained.retained_hessian`); the GGN operator's own
        product (forward-mode ``J v`` on a recorded forward pass) is cheaper than a retained one.
        """
        build = hessian if self.curvature == "hessian" else ggn
        op = build(
            self.model,
            loss_fn,
            [(x, y)],
            params=self.param_names,
            bn_mode=self.bn_mode,
            weight_decay=self.param_groups[0]["weight_decay"],
            dtype=self.dtype,
        )
        return retained_hessian(op) if self.curvature == "hessian" else op

    def _failure(self, what: str) -> FloatingPointError:
        group = self.param_groups[0]
        return FloatingPointError(
            f"{type(self).__name__}: {what}; lower the learning rate (lr={group['lr']:.3g}), "
            f"raise the damping (damping={self._damping(group):.3g}) or check the data"
        )

    def _damping(self, group: dict) -> float:
        """``delta``: given, learned (``"rmt"``, after two refreshes) or ``damping_ratio * lr``."""
        if group["damping"] == "rmt":
            params = group["params"]
            learned = self.state[params[0]].get("rmt_damping") if params else None
            if learned is not None:
                return float(learned)
        elif group["damping"] is not None:
            return float(group["damping"])
        return group["damping_ratio"] * float(group["lr"])

    def _learn_damping(self, op: Any, first: dict, theta: torch.Tensor) -> None:
        """``damping="rmt"``: fold ``H_b V`` into the shrinkage learner, store the new ``delta``.

        ``delta = rho / (1 - rho) * mu`` (:class:`~deepcurvature.linalg.ShrinkageDamping`), at
        least ``1e-6 * max |theta|`` (a condition number of at most 1e6 in the Krylov space).
        """
        group = self.param_groups[0]
        store = first.setdefault("rmt", {})
        learner = self._learner
        if learner is None or learner.state is not store or learner.num_params != op.shape[0]:
            learner = ShrinkageDamping(
                op.shape[0],
                probes=group["rmt_probes"],
                decay=group["rmt_decay"],
                dtype=group["params"][0].dtype,
                device=group["params"][0].device,
                state=store,
            )
            self._learner = learner
        learner.update(op.matmat(learner.probes.to(op.dtype)))
        est = learner.estimate()
        if est is None:
            return
        floor = 1e-6 * float(theta.abs().max()) if theta.numel() else 0.0
        delta = max(est.damping, floor)
        if not delta > 0:
            return  # no curvature seen at all: keep damping_ratio * lr
        dtype = group["params"][0].dtype  # as load_state_dict casts it: resume is exact
        first["rmt_damping"] = torch.tensor(delta, dtype=dtype)
        first["rmt_rho"] = torch.tensor(est.rho, dtype=dtype)

    def _refresh(self, params: list[torch.Tensor], g: torch.Tensor) -> None:
        """Build the Krylov basis of the curvature started at ``g`` and cache it in the state."""
        first = self.state[params[0]]
        for key in ("ritz_values", "ritz_coords"):
            first.pop(key, None)
        for p in params:
            self.state[p].pop("krylov_basis", None)
        if not bool(torch.any(g != 0)):
            return  # a zero gradient: nothing to precondition
        x, y, loss_fn = self._curvature_batch()
        try:
            op = self._operator(x, y, loss_fn)
            steps = min(self.param_groups[0]["lanczos_steps"], op.shape[0])
            res = lanczos(op, steps, start=g.to(op.dtype), store_vectors=True, verbose=False)
        except FloatingPointError as exc:
            raise self._failure(f"the {self.curvature} of the batch is not finite ({exc})") from exc
        Q = res.basis[0]
        theta, S = tridiagonal_eigh(res.alphas[0], res.betas[0])  # T = S diag(theta) S^T
        theta, S = torch.as_tensor(theta), torch.as_tensor(S)
        if not bool(torch.isfinite(theta).all()):
            raise self._failure(f"the Ritz values of the {self.curvature} are not finite")
        if self.param_groups[0]["damping"] == "rmt":
            try:
                self._learn_damping(op, first, theta)
            except FloatingPointError as exc:
                raise self._failure(f"the {self.curvature} of the batch is not finite") from exc
        first["ritz_values"] = theta.to(params[0])
        first["ritz_coords"] = S.to(params[0])
        offset = 0
        for p in params:
            n = p.numel()
            self.state[p]["krylov_basis"] = Q[offset : offset + n].to(p).clone()
            offset += n

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One stochastic Lanczos Newton step on the gradients in ``p.grad``."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        params = group["params"]
        first = self.state[params[0]]
        k = int(first.get("step", 0))
        wd = group["weight_decay"]
        grads = []
        for p in params:
            gp = p.grad if p.grad is not None else torch.zeros_like(p)
            gp = gp.reshape(-1)
            grads.append(gp + wd * p.reshape(-1) if wd else gp)
        g = torch.cat(grads) if len(grads) > 1 else grads[0].clone()
        if not bool(torch.isfinite(g).all()):
            raise self._failure("the gradient is not finite")
        has_basis = "ritz_values" in first
        if k % group["refresh_every"] == 0 or not has_basis:
            with torch.enable_grad():
                self._refresh(params, g)
        self._explicit = self._captured = None

        delta = self._damping(group)
        d = torch.zeros_like(g)
        if "ritz_values" in first:
            Qs = [self.state[p]["krylov_basis"] for p in params]
            coeffs = sum(q.T @ gp for q, gp in zip(Qs, grads, strict=True))  # Q^T g, (m,)
            S = first["ritz_coords"]
            z = S @ ((S.T @ coeffs) / self._shift(first["ritz_values"], delta))
            inside = torch.cat([q @ z for q in Qs]) if len(Qs) > 1 else Qs[0] @ z
            d -= inside
            if group["outside"] == "scale":
                projected = torch.cat([q @ coeffs for q in Qs]) if len(Qs) > 1 else Qs[0] @ coeffs
                d -= (g - projected) / delta
        elif group["outside"] == "scale":
            d -= g / delta
        if not bool(torch.isfinite(d).all()):
            raise self._failure("the step is not finite")

        mu = group["momentum"]
        offset = 0
        for p in params:
            n = p.numel()
            dp = d[offset : offset + n].view_as(p)
            offset += n
            if mu:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = dp.clone()
                else:
                    state["momentum_buffer"].mul_(mu).add_(dp)
                dp = state["momentum_buffer"]
            p.add_(dp, alpha=group["lr"])
        first["step"] = k + 1
        return loss


def _remove_all(handles: list) -> None:
    for h in handles:
        h.remove()


_DOC_ARGS = """

    Args:
        model: the network (hooks record the batch, see the module docstring); its selected
            parameters are the ones optimised.
        lr: learning rate ``alpha``.
        damping: ``delta``; default ``damping_ratio * lr`` at every step; ``"rmt"`` learns it
            by linear shrinkage (:class:`~deepcurvature.linalg.ShrinkageDamping`) from ``H_b V``
            at each refresh: ``delta = rho / (1 - rho) * tr H_b / P`` (``damping_ratio * lr``
            until two refreshes have been seen).
        damping_ratio: ``delta / alpha`` when ``damping`` is not given (the paper's 10).
        lanczos_steps: Krylov dimension ``k`` (clamped to the number of parameters).
        rmt_probes: probes of the shrinkage learner (``damping="rmt"``; one extra product of
            this many columns per refresh).
        rmt_decay: weight decay per refresh of the learner's running sums (1: plain mean).
        momentum: heavy-ball momentum ``mu`` on the step (0: none).
        weight_decay: L2 coefficient ``lam`` (gradient ``lam p``, curvature ``lam I``).
        outside: ``"scale"`` (default) steps along the gradient outside the Krylov space scaled
            by ``1 / delta``; ``"drop"`` ignores it. Only matters with ``refresh_every > 1``.
        refresh_every: rebuild the Krylov basis every this many steps (reusing ``Q``, ``T``).
        curvature_batch_size: use only the first this many samples of the batch for the
            curvature (default: all).
        curvature_data: an iterable of ``(x, y)`` batches (cycled) giving the curvature batch
            instead of the gradient batch (an independent batch).
        loss_fn: ``loss_fn(output, targets)`` with mean reduction; default the ``nn.Module``
            loss seen applied to the model's output, else ``nn.CrossEntropyLoss()``.
        params: parameter selection (names, glob patterns, modules; default all trainable).
        bn_mode: batch norm in the curvature: ``"train"`` (batch statistics, as the gradient)
            or ``"eval"`` (running statistics).
        dtype: evaluation dtype of the curvature products (default the model's).

    Raises:
        ValueError: a non-positive or non-finite ``lr``, ``damping`` (other than ``"rmt"``) or
            ``damping_ratio``; ``rmt_probes`` not a positive integer, ``rmt_decay`` not in (0, 1];
            ``lanczos_steps``, ``refresh_every`` or ``curvature_batch_size`` not a positive
            integer; unknown ``outside``/``bn_mode``; at a step, a curvature batch size larger
            than the batch.
        FloatingPointError: at a step, a non-finite gradient, curvature or step (the message
            names the fix).
        RuntimeError: at a step, no batch was recorded or given (see :meth:`set_batch`).
    """


class LanczosNewton(_KrylovNewton):
    """Saddle-free Newton in the Krylov space of the mini-batch Hessian: ``f = |theta| + delta``."""

    __doc__ = (__doc__ or "") + _DOC_ARGS
    curvature = "hessian"


class LanczosGGN(_KrylovNewton):
    """Damped Gauss-Newton in the Krylov space of the batch GGN: ``f = max(theta, 0) + delta``."""

    __doc__ = (__doc__ or "") + _DOC_ARGS
    curvature = "ggn"
