"""verl's RL formulas written in PyTorch, as the tests' reference (see shared/spec/rl_math.md).

Paraphrased from verl's ``core_algos.py`` / ``torch_functional.py`` semantics: per-group Python loops,
``torch.std`` (unbiased), clamp-based k3, the vanilla PPO loss with dual-clip, and ``agg_loss`` on one
rank. Deliberately naive, so it is easy to check against the spec by eye.
"""

from __future__ import annotations

from collections import defaultdict

import torch


def grpo_advantages(scores: torch.Tensor, index, eps: float = 1e-6, norm_by_std: bool = True) -> torch.Tensor:
    scores = scores.clone()
    members = defaultdict(list)
    for i, group in enumerate(index):
        members[group].append(i)
    out = torch.empty_like(scores)
    for rows in members.values():
        group = scores[rows]
        if len(rows) == 1:
            mean, std = torch.tensor(0.0, dtype=scores.dtype), torch.tensor(1.0, dtype=scores.dtype)
        else:
            mean, std = torch.mean(group), torch.std(group)
        out[rows] = (group - mean) / (std + eps) if norm_by_std else group - mean
    return out


def rloo_advantages(scores: torch.Tensor, index) -> torch.Tensor:
    members = defaultdict(list)
    for i, group in enumerate(index):
        members[group].append(i)
    out = torch.empty_like(scores)
    for rows in members.values():
        group = scores[rows]
        n = len(rows)
        out[rows] = group if n == 1 else group * n / (n - 1) - torch.mean(group) * n / (n - 1)
    return out


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str) -> torch.Tensor:
    if kind.endswith("+"):
        base = kl_penalty(logp, ref_logp, kind[:-1])
        k2 = kl_penalty(logp, ref_logp, "k2")
        return k2 - k2.detach() + base.detach()
    d = logp - ref_logp
    if kind in ("kl", "k1"):
        return d
    if kind == "abs":
        return d.abs()
    if kind in ("mse", "k2"):
        return 0.5 * d.square()
    if kind in ("low_var_kl", "k3"):
        x = torch.clamp(ref_logp - logp, min=-20, max=20)
        return torch.clamp(torch.exp(x) - x - 1, min=-10, max=10)
    raise NotImplementedError(kind)


def logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return torch.gather(logp, -1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    z = logits / temperature
    probs = torch.softmax(z, dim=-1)
    return torch.logsumexp(z, dim=-1) - torch.sum(probs * z, dim=-1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp_min(1)


def agg_loss(loss_mat: torch.Tensor, mask: torch.Tensor, mode: str, scale=None) -> torch.Tensor:
    seq_tokens = mask.sum(-1)
    num_seqs = (seq_tokens > 0).sum().clamp_min(1)
    if mode == "token-mean":
        return (loss_mat * mask).sum() / mask.sum()
    if mode == "token-sum":
        return (loss_mat * mask).sum()
    seq_sums = (loss_mat * mask).sum(-1)
    if mode == "seq-mean-token-sum":
        return seq_sums.sum() / num_seqs
    if mode == "seq-mean-token-mean":
        return (seq_sums / (seq_tokens + 1e-8)).sum() / num_seqs
    if mode == "seq-mean-token-sum-norm":
        return seq_sums.sum() / num_seqs / scale
    raise ValueError(mode)


def ppo_clip_loss(logp, old_logp, advantages, mask, clip_low=0.2, clip_high=0.2, clip_ratio_c=3.0,
                  mode="token-mean", scale=None, dual_clip=True):
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand_as(logp)
    log_ratio = torch.clamp(logp - old_logp, min=-20.0, max=20.0)
    ratio = torch.exp(log_ratio)
    losses1 = -advantages * ratio
    losses2 = -advantages * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    clip_losses1 = torch.maximum(losses1, losses2)
    metrics = {"clipfrac": masked_mean(torch.gt(losses2, losses1).float(), mask),
               "approx_kl": masked_mean(-log_ratio, mask)}
    if dual_clip:
        losses3 = -advantages * clip_ratio_c
        clip_losses2 = torch.min(losses3, clip_losses1)
        metrics["clipfrac_lower"] = masked_mean(torch.gt(clip_losses1, losses3) * (advantages < 0).float(), mask)
        losses = torch.where(advantages < 0, clip_losses2, clip_losses1)
    else:
        metrics["clipfrac_lower"] = torch.tensor(0.0)
        losses = clip_losses1
    return agg_loss(losses, mask, mode, scale), metrics


def grouped_scores(pair_scores, pair_valid, both_orders=True, empty_score=0.0):
    """The paper's S(y_i), as loops: the mean of every valid score response i received."""
    groups, k = pair_scores.shape[0], pair_scores.shape[1]
    S = torch.full((groups, k), float(empty_score), dtype=torch.float64)
    counts = torch.zeros((groups, k), dtype=torch.int64)
    for g in range(groups):
        for i in range(k):
            received = []
            for j in range(k):
                if i == j:
                    continue
                if pair_valid[g, i, j] and (both_orders or i < j):
                    received.append(float(pair_scores[g, i, j, 0]))
                if pair_valid[g, j, i] and (both_orders or j < i):
                    received.append(float(pair_scores[g, j, i, 1]))
            counts[g, i] = len(received)
            if received:
                S[g, i] = sum(received) / len(received)
    return S, counts
