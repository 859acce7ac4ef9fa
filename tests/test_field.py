"""Hash encoding and SDF field: geometric init, gradients (analytic / autodiff / finite differences), coarse-to-fine."""

from __future__ import annotations

import pytest
import torch

from pmni_method.fields.hash_encoding import HashGridEncoding, level_resolutions
from pmni_method.fields.sdf_field import SDFField, SDFFieldConfig


def small_config(**overrides) -> SDFFieldConfig:
    options = dict(num_levels=6, features_per_level=2, log2_hashmap_size=12, base_resolution=8, per_level_scale=1.5)
    options.update(overrides)
    return SDFFieldConfig(**options)


def randomised_field(seed: int = 0) -> SDFField:
    """A field far from its initialisation (large table entries, random MLP) in float64."""
    torch.manual_seed(seed)
    field = SDFField(small_config(hash_init_scale=0.5)).double()
    for layer in field.layers:
        torch.nn.init.normal_(layer.weight, 0.0, 0.3)
    return field


def test_geometric_init_is_a_sphere_sdf() -> None:
    torch.manual_seed(0)
    cfg = small_config(sphere_init_radius=0.5)
    field = SDFField(cfg)
    dirs = torch.randn(2000, 3)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    radii = torch.rand(2000, 1) * 0.7 + 0.25
    x = dirs * radii
    with torch.no_grad():
        sdf = field.sdf(x)
    expected = radii - 0.5
    # 64 evenly spread Softplus units approximate |x| to a few hundredths away from the origin.
    assert (sdf - expected).abs().max() < 0.06
    assert (torch.sign(sdf) == torch.sign(expected))[(expected.abs() > 0.06)].all()
    _, grad = field.sdf_and_gradient(x[radii[:, 0] > 0.2], create_graph=False)
    assert (grad.norm(dim=-1) - 1.0).abs().mean() < 0.1


def test_forward_geonetwork_shape_and_sdf_column() -> None:
    field = SDFField(small_config(geo_feat_dim=3))
    x = torch.rand(17, 3) * 2 - 1
    out = field.forward_geonetwork(x)
    assert out.shape == (17, 4)
    torch.testing.assert_close(out[:, :1], field.sdf(x))


def test_analytic_gradient_matches_autodiff_including_parameter_gradients() -> None:
    field = randomised_field()
    x = (torch.rand(300, 3, dtype=torch.float64) * 1.9 - 0.95).requires_grad_(True)
    sdf_a, grad_a = field.sdf_and_gradient(x, method="autodiff")
    sdf_b, grad_b = field.sdf_and_gradient(x, method="analytic")
    torch.testing.assert_close(sdf_a, sdf_b)
    torch.testing.assert_close(grad_a, grad_b, rtol=1e-7, atol=1e-7)
    weights = torch.randn_like(grad_a)
    params = list(field.parameters()) + [x]
    ga = torch.autograd.grad((grad_a * weights).sum() + sdf_a.sum(), params)
    gb = torch.autograd.grad((grad_b * weights).sum() + sdf_b.sum(), params)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_finite_difference_gradient_approximates_autodiff() -> None:
    field = randomised_field(1)
    field.config.fd_step = 1e-5
    x = torch.rand(400, 3, dtype=torch.float64) * 1.8 - 0.9
    _, grad_ad = field.sdf_and_gradient(x, method="autodiff", create_graph=False)
    _, grad_fd = field.sdf_and_gradient(x, method="finite_difference")
    close = ((grad_ad - grad_fd).norm(dim=-1) <= 1e-3 * grad_ad.norm(dim=-1).clamp(min=1.0))
    # Points within one step of a grid-cell face see the kink of trilinear interpolation; nearly all do not.
    assert close.float().mean() > 0.97


def test_finite_difference_step_follows_active_levels() -> None:
    field = SDFField(small_config())
    field.set_active_levels(2)
    res = level_resolutions(6, 8, 1.5)
    assert field.fd_step() == pytest.approx(max(2.0 / res[1], field.config.fd_min_step))
    field.set_active_levels(6)
    assert field.fd_step() == pytest.approx(max(2.0 / res[5], field.config.fd_min_step))


def test_gradients_work_under_no_grad() -> None:
    field = randomised_field()
    x = torch.rand(10, 3, dtype=torch.float64)
    with torch.no_grad():
        for method in ("analytic", "autodiff", "finite_difference"):
            sdf, grad = field.sdf_and_gradient(x, create_graph=False, method=method)  # type: ignore[arg-type]
            assert torch.isfinite(grad).all() and grad.abs().sum() > 0
            assert not grad.requires_grad


def test_hash_encoding_double_backward() -> None:
    torch.manual_seed(0)
    enc = HashGridEncoding(num_levels=4, log2_hashmap_size=10, base_resolution=4, implementation="torch", init_scale=0.5).double()
    x = torch.rand(50, 3, dtype=torch.float64, requires_grad=True)
    y = enc(x)
    (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    (g_table,) = torch.autograd.grad(gx.square().sum(), enc.table)
    assert torch.isfinite(g_table).all() and g_table.abs().sum() > 0
    # Numerically against a perturbation of the table (the loss is smooth in the table entries).
    direction = torch.randn_like(enc.table)
    eps = 1e-6

    def loss(table: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            enc.table.copy_(table)
        xx = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(enc(xx).square().sum(), xx, create_graph=False)
        return g.square().sum()

    base = enc.table.detach().clone()
    numeric = (loss(base + eps * direction) - loss(base - eps * direction)) / (2 * eps)
    loss(base)
    assert float(numeric) == pytest.approx(float((g_table * direction).sum()), rel=1e-4)


def test_hash_encoding_dense_levels_are_collision_free_and_interpolate() -> None:
    enc = HashGridEncoding(num_levels=2, log2_hashmap_size=12, base_resolution=4, per_level_scale=2.0, implementation="torch")
    assert enc.num_dense == 2  # 5^3 and 9^3 vertices fit in 4096 entries
    with torch.no_grad():
        enc.table.copy_(torch.arange(enc.table.numel(), dtype=torch.float32).view_as(enc.table))
    # At a grid vertex the feature is exactly that vertex's entry.
    x = torch.tensor([[0.25, 0.5, 0.75]])
    out = enc(x)
    idx, frac = enc.corner_indices(x)
    assert torch.all(frac[0, 0] == torch.tensor([1.0, 2.0, 3.0]) - torch.floor(torch.tensor([1.0, 2.0, 3.0])))
    vertex = 1 + 5 * (2 + 5 * 3)
    assert out[0, 0] == enc.table[vertex, 0]
    # x = 1 stays in range (the last cell is closed).
    assert torch.isfinite(enc(torch.ones(1, 3))).all()


def test_coarse_to_fine_masks_the_right_levels() -> None:
    torch.manual_seed(0)
    field = SDFField(small_config(hash_init_scale=0.5))
    x = torch.rand(64, 3) * 2 - 1
    enc_full = field.encoding((x + 1) * 0.5)
    field.set_active_levels(2)
    mask = field._feature_mask()
    assert mask.tolist() == [1.0] * 4 + [0.0] * 8
    assert field.num_active_levels == 2
    # Changing the masked levels' table rows must not change the SDF.
    first_masked_row = int(field.encoding.level_offset[2])
    before = field.sdf(x).detach()
    with torch.no_grad():
        field.encoding.table[first_masked_row:] += 10.0
    torch.testing.assert_close(field.sdf(x).detach(), before)
    assert enc_full.shape[1] == 12


def test_auto_backend_is_torch_when_the_model_trains_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA machine with tiny-cuda-nn installed may still train on CPU: "auto" must not pick tcnn there."""
    from nerfstudio.data.scene_box import SceneBox

    from pmni_method.fields import hash_encoding
    from pmni_method.nerfstudio_adapter.presets import model_config

    monkeypatch.setattr(hash_encoding, "tcnn_available", lambda: True)
    config = model_config("pmni-fast")
    config.core.sdf_field.num_levels = 2
    config.core.sdf_field.log2_hashmap_size = 10
    assert config.core.sdf_field.implementation == "auto"
    box = SceneBox(aabb=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]))
    model = config.setup(scene_box=box, num_train_data=1, metadata={}, device="cpu")
    assert model.field.encoding.implementation == "torch"
    assert model.field.encoding.tcnn_encoding is None


def test_one_function_chooses_every_backend() -> None:
    from pmni_method.backends import choose_backend
    from pmni_method.models.sampler import OccupancyGrid, OccupancySamplerConfig

    assert choose_backend("auto", "nerfacc", cuda=True) == "nerfacc"
    assert choose_backend("auto", "nerfacc", cuda=False) == "torch"
    assert choose_backend("auto", "tcnn", cuda=True, available=False) == "torch"
    assert choose_backend("torch", "tcnn", cuda=True) == "torch"
    assert choose_backend("tcnn", "tcnn", cuda=False) == "tcnn"  # an explicit choice is kept (and fails where it runs)
    with pytest.raises(ValueError, match="'nerfacc' here, not 'tcnn'"):
        choose_backend("tcnn", "nerfacc", cuda=True)
    grid = OccupancyGrid(OccupancySamplerConfig(grid_resolution=8, backend="nerfacc"))
    o, d = torch.zeros(2, 3), torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    with pytest.raises(RuntimeError, match="needs CUDA"):
        grid.march(o, d, torch.zeros(2), torch.ones(2), 0.1, stratified=False)
