"""The synthetic source is learnable by the model it stands in for (slow: trains a Conv4)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metaacdc.data import EpisodeSampler, synthetic_split

STEPS = 300  # about 2 minutes on one CPU core


@pytest.mark.slow
def test_conv4_first_order_maml_beats_chance_on_synthetic() -> None:
    learn2learn = pytest.importorskip("learn2learn")
    from metaacdc.backbones import create_backbone

    torch.manual_seed(0)
    size = 28
    train = synthetic_split("train", image_size=size, images_per_class=30, seed=0)
    test = synthetic_split("test", image_size=size, images_per_class=30, seed=0)
    model = create_backbone("conv4", "plain", num_classes=5, image_size=size)
    maml = learn2learn.algorithms.MAML(model, lr=0.1, first_order=True)
    optimiser = torch.optim.Adam(maml.parameters(), lr=1e-3)
    tasks = EpisodeSampler(train, ways=5, shots=5, queries=10, seed=0)

    def adapted(episode):
        learner = maml.clone()
        for _ in range(5):
            learner.adapt(F.cross_entropy(learner(episode.support_x), episode.support_y))
        return learner

    for step in range(STEPS):
        episode = tasks.episode(step)
        loss = F.cross_entropy(adapted(episode)(episode.query_x), episode.query_y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    evaluation = EpisodeSampler(test, ways=5, shots=5, queries=10, seed=1)
    correct = []
    for i in range(30):
        episode = evaluation.episode(i)
        learner = adapted(episode)
        with torch.no_grad():
            predicted = learner(episode.query_x).argmax(1)
        correct.append((predicted == episode.query_y).float().mean().item())
    accuracy = sum(correct) / len(correct)
    assert accuracy > 0.4, f"Conv4 MAML reached only {accuracy:.2f} (chance 0.20)"
