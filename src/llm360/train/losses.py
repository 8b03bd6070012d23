"""Fine-tuning losses: cross-entropy on the masked targets (SFT), and the sigmoid DPO loss.

Shapes follow the rows of `llm360.data.chat_rows`: logits (B, T, V) for inputs = row[:-1],
targets (B, T) = row[1:], loss_mask (B, T) aligned with the targets (1: the target is scored).

DPO (Rafailov et al. 2023) scores a pair by how much more the policy than the reference prefers
the chosen answer: with log-ratios r = log pi(y|x) - log pi_ref(y|x) summed over the answer's
tokens, the loss is -log sigmoid(beta * (r_chosen - r_rejected)); beta * r is an answer's
implicit reward. The reference log-probabilities are numbers computed once, before training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, T) log-probability of each target under the logits, in fp32."""
    B, T, V = logits.shape
    return -F.cross_entropy(logits.float().reshape(B * T, V), targets.reshape(B * T), reduction="none").view(B, T)


def masked_cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor,
                             loss_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the cross-entropy over the targets the mask keeps, how many it keeps): divide the
    sums of all micro-batches of a step by their total count for the step's mean loss."""
    mask = loss_mask.to(torch.float32)
    return -(token_logprobs(logits, targets) * mask).sum(), mask.sum()


def sequence_logprobs(logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """(B,) summed log-probabilities of each row's masked targets (an answer's log pi(y|x))."""
    return (token_logprobs(logits, targets) * loss_mask.to(torch.float32)).sum(dim=1)


def dpo_sigmoid_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                     ref_rejected: torch.Tensor, beta: float,
                     reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, chosen_rewards, rejected_rewards) of pairs of summed log-probs, each (B,).

    The loss is the mean (or, with reduction="sum", the sum) over pairs of
    -log sigmoid(beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)));
    the rewards are beta * (policy - ref) of each answer, detached (metrics, not losses).
    """
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    losses = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))  # (B,)
    loss = losses.sum() if reduction == "sum" else losses.mean()
    return loss, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def reward_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict[str, float]:
    """Means over pairs of the chosen and rejected rewards, the reward margin (chosen - rejected)
    and the reward accuracy (the fraction of pairs whose chosen reward is the larger)."""
    return {
        "chosen_reward": chosen_rewards.mean().item(),
        "rejected_reward": rejected_rewards.mean().item(),
        "reward_margin": (chosen_rewards - rejected_rewards).mean().item(),
        "reward_accuracy": (chosen_rewards > rejected_rewards).float().mean().item(),
    }
