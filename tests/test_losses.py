"""ReprPO loss parts on small synthetic tensors with hand-computed answers."""

from __future__ import annotations

import math

import pytest
import torch

from interp.losses import (
    coherence_loss,
    gap_scale,
    gaps,
    ordering_loss,
    preference_direction,
    projection_loss,
    to_space,
    token_nll,
)


def test_direction_dhs_is_pc1_oriented_by_mean():
    # differences all along -e1 (with small e2 noise): PC1 is ±e1, oriented so mean diff projects positively
    h_rej = torch.zeros(4, 3)
    h_cho = torch.tensor([[-2.0, 0.1, 0], [-3.0, -0.1, 0], [-2.5, 0.0, 0], [-1.0, 0.0, 0]])
    d = preference_direction(h_cho, h_rej, "dHS")
    assert d.shape == (3,)
    assert torch.allclose(d, torch.tensor([-1.0, 0.0, 0.0]), atol=0.03)
    assert float((h_cho - h_rej).mean(0) @ d) > 0
    assert math.isclose(float(d.norm()), 1.0, rel_tol=1e-5)
    # swapping chosen and rejected flips the direction
    assert torch.allclose(preference_direction(h_rej, h_cho), -d)


def test_direction_dhs_u_lives_in_r_space():
    # U picks coordinates 1 and 2 of a 3-d hidden state; the differences are (5, 0, 1) -> in U space (0, 1)
    U = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    h_cho = torch.tensor([[5.0, 0.0, 1.0], [5.0, 0.0, 2.0]])
    h_rej = torch.zeros(2, 3)
    d = preference_direction(h_cho, h_rej, "dHS@U", U)
    assert d.shape == (2,)
    assert torch.allclose(d, torch.tensor([0.0, 1.0]), atol=1e-6)
    # the raw space sees mostly the first coordinate instead
    assert abs(float(preference_direction(h_cho, h_rej, "dHS")[0])) > 0.9
    assert torch.allclose(gaps(h_cho, h_rej, d, "dHS@U", U), torch.tensor([1.0, 2.0]))
    assert torch.allclose(to_space(h_cho, "dHS@U", U), h_cho[:, 1:])


def test_space_errors():
    h = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="valid spaces"):
        to_space(h, "hs")
    with pytest.raises(ValueError, match="needs"):
        to_space(h, "dHS@U", None)
    with pytest.raises(ValueError, match="d_model"):
        to_space(h, "dHS@U", torch.zeros(4, 2))


def test_projection_loss_hand_computed_and_guard_flip():
    ref = torch.tensor([1.0, 3.0])  # scale = mean|ref| = 2
    pos = torch.tensor([3.0, 5.0])  # +2 over ref -> +1 in units
    neg = torch.tensor([0.0, 2.0])  # -1 over ref -> -0.5
    assert float(gap_scale(ref)) == 2.0
    t = projection_loss(pos, neg, ref, "proj")
    assert t.orientation == 1
    assert math.isclose(float(t.separation), 1.5) and math.isclose(float(t.loss), -1.5)
    # the adapter moves the wrong way: guard flips both signs, loss is the same, orientation -1
    f = projection_loss(neg, pos, ref, "proj")
    assert f.orientation == -1
    assert math.isclose(float(f.separation), -1.5) and math.isclose(float(f.loss), -1.5)
    # DPO-style variant: -log sigmoid(beta * o * sep)
    ls = projection_loss(pos, neg, ref, "logsigmoid", beta=2.0)
    assert math.isclose(float(ls.loss), -math.log(1 / (1 + math.exp(-3.0))), rel_tol=1e-6)
    ls_f = projection_loss(neg, pos, ref, "logsigmoid", beta=2.0)
    assert ls_f.orientation == -1 and math.isclose(float(ls_f.loss), float(ls.loss), rel_tol=1e-6)
    with pytest.raises(ValueError, match="valid kinds"):
        projection_loss(pos, neg, ref, "dpo")


def test_projection_loss_gradient_pushes_apart():
    ref = torch.tensor([1.0, 1.0])
    pos = torch.tensor([1.5, 1.5], requires_grad=True)
    neg = torch.tensor([0.5, 0.5], requires_grad=True)
    projection_loss(pos, neg, ref).loss.backward()
    assert (pos.grad < 0).all() and (neg.grad > 0).all()  # descent raises gap(+1), lowers gap(-1)
    assert torch.allclose(pos.grad, torch.tensor([-0.5, -0.5]))


def test_ordering_loss_hand_computed():
    ref = torch.tensor([2.0, 2.0])  # scale 2
    ordered = ordering_loss(torch.tensor([0.0, 0.0]), ref, torch.tensor([4.0, 4.0]), margin=0.1)
    assert float(ordered) == 0.0
    # pair 0: g(-1)=1.5 > g(0)=1 (violates by 0.5 + margin); pair 1: g(+1)=0.5 < g(0)=1 (violates by 0.5 + margin)
    bad = ordering_loss(torch.tensor([3.0, 0.0]), ref, torch.tensor([4.0, 1.0]), margin=0.1)
    assert math.isclose(float(bad), 0.6, rel_tol=1e-6)
    # with orientation -1 the ordered case is reversed: both hinges fire on both pairs: (1 + .1) * 2
    assert math.isclose(float(ordering_loss(torch.tensor([0.0, 0.0]), ref, torch.tensor([4.0, 4.0]), -1, 0.1)), 2.2, rel_tol=1e-6)
    with pytest.raises(ValueError):
        ordering_loss(ref, ref, ref, orientation=0)


def test_token_nll_hand_computed():
    # vocab 2; logits favour token 0 with log-odds log(3): p(0)=0.75
    logits = torch.log(torch.tensor([[[3.0, 1.0]] * 3, [[3.0, 1.0]] * 3]))
    tokens = torch.tensor([[0, 0, 1], [9, 0, 0]])  # row 1 starts with a pad (id 9 must be ignored)
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    tokens = tokens.clamp(max=1)
    nll, count = token_nll(logits, tokens, mask)
    assert count.tolist() == [2, 1]
    assert math.isclose(float(nll[0]), (-math.log(0.75) - math.log(0.25)) / 2, rel_tol=1e-6)
    assert math.isclose(float(nll[1]), -math.log(0.75), rel_tol=1e-6)


def test_coherence_loss_hand_computed_and_adaptive_weights():
    ref = torch.tensor([1.0, 1.0])
    # +1: dNLL = (0.5, 0.1) -> relu(.-0.2)^2 = (0.09, 0) -> P=0.045; -1: dNLL = (0.2, 0.2) -> P=0
    loss, w = coherence_loss(torch.tensor([1.5, 1.1]), torch.tensor([1.2, 1.2]), ref, tau=0.2, temperature=0.1)
    # mean dNLL (0.3, 0.2): w = 2 softmax((3, 2))
    e = math.exp(1.0)
    assert torch.allclose(w, torch.tensor([2 * e / (e + 1), 2 / (e + 1)]))
    assert math.isclose(float(loss), float(w[0]) * 0.045, rel_tol=1e-5)
    assert float(w[0]) > 1 > float(w[1])  # the worse direction weighs more
    # below tau costs nothing; equal directions weigh 1 each
    zero, w_eq = coherence_loss(ref + 0.1, ref + 0.1, ref)
    assert float(zero) == 0.0 and torch.allclose(w_eq, torch.ones(2))


def test_antisymmetry_loss_known_answers():
    from interp.losses import antisymmetry_loss

    d = torch.tensor([1.0, 0.0])
    ref = torch.zeros(3, 2)
    pos = torch.tensor([[2.0, 0.0], [5.0, 0.0], [0.1, 0.0]])
    # exactly anti-parallel along d, whatever the magnitudes: -1
    assert float(antisymmetry_loss(pos, -0.01 * pos, ref, d)) == pytest.approx(-1.0)
    # both shifts on the same side: +1; orthogonal shifts: 0
    assert float(antisymmetry_loss(pos, pos, ref, d)) == pytest.approx(1.0)
    ortho = torch.tensor([[0.0, 1.0]] * 3)
    assert float(antisymmetry_loss(pos, ortho, ref, d)) == pytest.approx(0.0)
    # growing one side does not change the loss (scale-free), and the reference is subtracted
    assert float(antisymmetry_loss(10 * pos + 1, -pos + 1, torch.ones(3, 2), d)) == pytest.approx(-1.0)
    # orientation-free: swapping the sides gives the same loss
    a, b = torch.randn(4, 2), torch.randn(4, 2)
    assert float(antisymmetry_loss(a, b, ref[:1].expand(4, 2), d)) == pytest.approx(float(antisymmetry_loss(b, a, ref[:1].expand(4, 2), d)))
