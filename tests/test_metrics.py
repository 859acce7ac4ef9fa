"""Tests of pmni_method.evaluation and the pmni-eval CLI on analytic meshes (and, when present, generated datasets)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from scipy.spatial.transform import Rotation

from pmni_method.cameras import Normalisation, ring_poses
from pmni_method.alignment import apply_alignment
from pmni_method.evaluation import evaluate_arrays
from pmni_method.metrics import chamfer_fscore, normal_metrics, view_normal_stats
from pmni_method.raycast import render_normal_maps, sample_visible_surface
from pmni_method.report import print_metrics
from pmni_method.poses.maths import similarity_matrix, umeyama
from pmni_method.scripts.eval import EvalConfig, main

REPO = Path(__file__).resolve().parents[1]

H = W = 64
K = np.array([[80.0, 0.0, 31.5], [0.0, 80.0, 31.5], [0.0, 0.0, 1.0]])
# Several elevations so that no part of the sphere is seen only at grazing angles (poles of a single ring).
C2W = ring_poses(20, 4.0, elevation_deg=np.array([-60.0, -30.0, 0.0, 30.0, 60.0] * 4))
R_SPHERE = 1.0


@pytest.fixture(scope="module")
def sphere():
    return trimesh.creation.icosphere(subdivisions=5, radius=R_SPHERE)


@pytest.fixture(scope="module")
def sphere_views(sphere):
    normals, masks = render_normal_maps(sphere, K, C2W, H, W)
    return normals, masks


def _asymmetric_mesh() -> trimesh.Trimesh:
    # No symmetry, so a wrong alignment cannot be hidden by the shape mapping onto itself.
    box = trimesh.creation.box(extents=(1.2, 0.7, 0.5))
    bump = trimesh.creation.icosphere(subdivisions=2, radius=0.3)
    bump.apply_translation((0.5, 0.35, 0.1))
    return trimesh.util.concatenate([box, bump])


# --------------------------------------------------------------------------------------------------------------------
# Chamfer / F-score
# --------------------------------------------------------------------------------------------------------------------


def test_identical_meshes_give_zero_chamfer_and_unit_fscore(sphere, sphere_views):
    _, masks = sphere_views
    pts = sample_visible_surface(sphere, K, C2W, masks)
    assert len(pts) == masks.sum()
    m = chamfer_fscore(pts, sample_visible_surface(sphere.copy(), K, C2W, masks), threshold=1e-6)
    assert m["chamfer"] == 0.0 and m["accuracy"] == 0.0 and m["completeness"] == 0.0
    assert m["fscore"] == 1.0 and m["precision"] == 1.0 and m["recall"] == 1.0


def test_normal_pass_samples_equal_visible_surface_samples(sphere_views):
    # evaluate_arrays takes the prediction's samples from the normal pass (one cast per pixel); they must be the
    # protocol's samples.
    normals, masks = sphere_views
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.9)
    for v in (0, 7):
        _, pts = view_normal_stats(mesh, K, C2W[v], normals[v], masks[v])
        np.testing.assert_array_equal(pts, sample_visible_surface(mesh, K, C2W[v : v + 1], masks[v : v + 1]))


def test_concentric_spheres_chamfer_equals_radius_gap(sphere, sphere_views):
    _, masks = sphere_views
    d = 0.05
    bigger = trimesh.creation.icosphere(subdivisions=5, radius=R_SPHERE + d)
    gt = sample_visible_surface(sphere, K, C2W, masks)
    pred = sample_visible_surface(bigger, K, C2W, masks)
    # Every sample sits d from the other sphere, but its nearest neighbour is a sample next to its radial
    # projection, which adds ~spacing^2 / (2 d) (about 2 % at this image size); tessellation adds < 0.1 %.
    m = chamfer_fscore(pred, gt, threshold=0.5 * d)
    assert m["chamfer"] == pytest.approx(d, rel=0.04)
    assert m["accuracy"] == pytest.approx(d, rel=0.04) and m["completeness"] == pytest.approx(d, rel=0.04)
    assert m["chamfer"] >= d * 0.999
    assert m["fscore"] < 0.01
    assert chamfer_fscore(pred, gt, threshold=2.0 * d)["fscore"] > 0.99


def test_chamfer_empty_prediction_is_json_safe():
    m = chamfer_fscore(np.zeros((0, 3)), np.random.default_rng(0).normal(size=(10, 3)), threshold=0.5)
    assert m["chamfer"] is None and m["fscore"] == 0.0
    json.dumps(m, allow_nan=False)


def test_chamfer_hand_computed():
    gt = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    pred = np.array([[0.0, 0.1, 0.0]])
    m = chamfer_fscore(pred, gt, threshold=0.5)
    assert m["accuracy"] == pytest.approx(0.1)
    assert m["completeness"] == pytest.approx((0.1 + np.hypot(1.0, 0.1)) / 2)
    assert m["precision"] == 1.0 and m["recall"] == 0.5 and m["fscore"] == pytest.approx(2 / 3)


# --------------------------------------------------------------------------------------------------------------------
# Normals and silhouettes
# --------------------------------------------------------------------------------------------------------------------


def test_normal_mae_zero_for_identical_mesh(sphere, sphere_views):
    normals, masks = sphere_views
    for normal_type in ("interpolated", "face"):
        gt_normals, _ = render_normal_maps(sphere, K, C2W, H, W, normal_type=normal_type)
        m = normal_metrics(sphere, K, C2W, gt_normals, masks, heldout_views=(0, 5), normal_type=normal_type)
        assert m["all"]["mae_deg"] == pytest.approx(0.0, abs=1e-6)
        assert m["all"]["hit_fraction"] == 1.0 and m["all"]["silhouette_iou"] == 1.0
        assert m["heldout"]["mae_deg"] == pytest.approx(0.0, abs=1e-6)
        assert m["heldout"]["num_mask_pixels"] == masks[[0, 5]].sum()


@pytest.mark.parametrize("normal_type", ["interpolated", "face"])
def test_normal_mae_of_rotated_plane_is_rotation_angle(normal_type):
    # A plane much wider than the view, rotated about an axis lying in it: every pixel still hits it and every
    # normal is off by exactly the rotation angle.
    plane = trimesh.Trimesh(
        vertices=[[-50, -50, 0], [50, -50, 0], [50, 50, 0], [-50, 50, 0]], faces=[[0, 1, 2], [0, 2, 3]]
    )
    c2w = ring_poses(3, 3.0, elevation_deg=np.array([90.0 - 1e-3, 70.0, 50.0]), up=np.array([0.0, 0.0, 1.0]))
    gt_normals, masks = render_normal_maps(plane, K, c2w, H, W, normal_type=normal_type)
    assert masks.all()
    angle = 17.0
    rot = np.eye(4)
    rot[:3, :3] = Rotation.from_rotvec(np.deg2rad(angle) * np.array([1.0, 1.0, 0.0]) / np.sqrt(2)).as_matrix()
    m = normal_metrics(apply_alignment(plane, rot), K, c2w, gt_normals, masks, normal_type=normal_type)
    assert m["all"]["hit_fraction"] == 1.0
    assert m["all"]["mae_deg"] == pytest.approx(angle, abs=1e-6)


def test_hit_fraction_and_iou_catch_holes_and_background(sphere, sphere_views):
    normals, masks = sphere_views
    smaller = trimesh.creation.icosphere(subdivisions=4, radius=0.8)
    m = normal_metrics(smaller, K, C2W, normals, masks)["all"]
    assert 0.4 < m["hit_fraction"] < 0.8
    assert m["silhouette_iou"] == pytest.approx(m["hit_fraction"], abs=1e-9)  # hits are a subset of the mask

    # A false surface in the background: mask hits unchanged, IoU drops.
    floater = trimesh.creation.icosphere(subdivisions=2, radius=0.3)
    floater.apply_translation((0.0, 1.8, 0.0))
    with_floater = trimesh.util.concatenate([sphere, floater])
    m = normal_metrics(with_floater, K, C2W, normals, masks)["all"]
    assert m["hit_fraction"] > 0.95
    assert m["silhouette_iou"] < 0.97


# --------------------------------------------------------------------------------------------------------------------
# Alignment
# --------------------------------------------------------------------------------------------------------------------


def _random_similarity(seed: int = 0):
    rng = np.random.default_rng(seed)
    return 1.7, Rotation.random(random_state=seed).as_matrix(), rng.normal(size=3) * 2.0


def test_umeyama_recovers_known_similarity():
    s, R, t = _random_similarity()
    src = np.random.default_rng(1).normal(size=(50, 3))
    dst = s * src @ R.T + t
    s_hat, R_hat, t_hat = umeyama(src, dst)
    assert s_hat == pytest.approx(s, rel=1e-10)
    np.testing.assert_allclose(R_hat, R, atol=1e-10)
    np.testing.assert_allclose(t_hat, t, atol=1e-10)

    s1, R1, t1 = umeyama(src, src @ R.T + t, with_scale=False)
    assert s1 == 1.0
    np.testing.assert_allclose(R1, R, atol=1e-10)
    np.testing.assert_allclose(t1, t, atol=1e-10)


def test_umeyama_returns_rotation_for_mirrored_points():
    src = np.random.default_rng(2).normal(size=(30, 3))
    _, R, _ = umeyama(src, src * np.array([1.0, 1.0, -1.0]))
    assert np.linalg.det(R) == pytest.approx(1.0)


def test_alignment_parameter_undoes_known_similarity():
    gt = _asymmetric_mesh()
    s, R, t = _random_similarity(3)
    T = similarity_matrix(s, R, t)
    pred = apply_alignment(gt, np.linalg.inv(T))  # the reconstruction lives in some other similarity frame
    c2w = ring_poses(8, 4.0, elevation_deg=20.0)
    normals, masks = render_normal_maps(gt, K, c2w, H, W)

    aligned = evaluate_arrays(pred, gt, K, c2w, masks, normals, threshold=1e-3, alignment=T)
    assert aligned["geometry"]["chamfer"] < 1e-9
    assert aligned["geometry"]["fscore"] == 1.0
    assert aligned["normals"]["all"]["mae_deg"] < 1e-4
    np.testing.assert_allclose(aligned["alignment"], T)

    unaligned = evaluate_arrays(pred, gt, K, c2w, masks, normals, threshold=1e-3)
    assert unaligned["geometry"]["chamfer"] is None or unaligned["geometry"]["chamfer"] > 0.1
    json.dumps(aligned, allow_nan=False)
    print_metrics(aligned)


def test_surface_index_answers_near_points_like_trimesh_and_far_points_within_a_coarse_spacing():
    from pmni_method.alignment import _SurfaceIndex

    sphere = trimesh.creation.icosphere(subdivisions=3)
    rng = np.random.default_rng(0)
    index = _SurfaceIndex(sphere, 200_000)
    near = trimesh.sample.sample_surface(sphere, 300, seed=1)[0] * (1.0 + 0.01 * rng.normal(size=(300, 1)))
    # Points near the centre are almost equally far from every sample: the case that made the k-d tree crawl.
    far = rng.normal(size=(300, 3)) * 0.05
    for points, tolerance in ((near, 1e-9), (far, index._coarse_spacing)):
        closest, distance, faces = index.closest(points)
        exact, exact_distance, _ = trimesh.proximity.closest_point(sphere, points)
        assert np.all(distance >= exact_distance - 1e-12) and np.all(distance <= exact_distance + tolerance)
        np.testing.assert_allclose(np.linalg.norm(closest - points, axis=1), distance)
        # Each answer lies on the face it names.
        np.testing.assert_allclose(np.einsum("ij,ij->i", closest - sphere.triangles[faces][:, 0], sphere.face_normals[faces]), 0.0, atol=1e-12)


def test_icp_refinement_removes_a_small_alignment_error_but_keeps_the_primary_metrics():
    gt = _asymmetric_mesh()
    c2w = ring_poses(8, 4.0, elevation_deg=20.0)
    normals, masks = render_normal_maps(gt, K, c2w, H, W)
    # A camera-based alignment that is slightly off: 3 degrees, a shift and a 2 % scale error.
    turn = Rotation.from_rotvec([0.0, 0.0, np.radians(3.0)]).as_matrix()
    off = similarity_matrix(1.02, turn, np.array([0.03, -0.02, 0.01]))
    m = evaluate_arrays(gt, gt, K, c2w, masks, normals, threshold=1e-3, alignment=off, refine_alignment=True)
    refined = m["refined_alignment"]
    assert m["geometry"]["chamfer"] > 0.01  # the primary metrics keep the alignment as given
    assert refined["geometry"]["chamfer"] < 1e-3 * m["geometry"]["chamfer"], refined["geometry"]
    assert refined["normals"]["all"]["mae_deg"] < 0.05
    assert refined["icp_rotation_deg"] == pytest.approx(3.0, abs=0.01)
    assert refined["icp_scale"] == pytest.approx(1 / 1.02, rel=1e-4)
    np.testing.assert_allclose(np.asarray(refined["icp"]) @ off, np.eye(4), atol=1e-4)
    assert "refined_alignment" not in evaluate_arrays(gt, gt, K, c2w, masks, normals, threshold=1e-3)
    json.dumps(m, allow_nan=False)
    print_metrics(m)


def test_c2w_to_world_inverts_c2w_to_normalised():
    s, R, t = _random_similarity(4)
    norm = Normalisation(similarity_matrix(s, R, t))
    c2w_world = ring_poses(5, 300.0, elevation_deg=15.0, target=np.array([10.0, -20.0, 5.0]))
    back = norm.c2w_to_world(norm.c2w_to_normalised(c2w_world))
    np.testing.assert_allclose(back, c2w_world, atol=1e-9)
    np.testing.assert_allclose(norm.c2w_to_world(norm.c2w_to_normalised(c2w_world[0])), c2w_world[0], atol=1e-9)


# --------------------------------------------------------------------------------------------------------------------
# CLI bad input
# --------------------------------------------------------------------------------------------------------------------


def _run_main(capsys, **kwargs) -> tuple[int, str]:
    code = main(EvalConfig(**kwargs))
    err = capsys.readouterr().err
    return code, err


def test_cli_missing_mesh(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    trimesh.creation.box().export(data / "mesh_Gt.ply")
    out = tmp_path / "m.json"
    code, err = _run_main(capsys, mesh=tmp_path / "nope.ply", data=data, output=out)
    assert code == 2
    assert err.count("\n") == 1 and "nope.ply" in err and "not found" in err
    assert not out.exists()


def test_cli_missing_data_and_gt(tmp_path, capsys):
    mesh = tmp_path / "m.ply"
    trimesh.creation.box().export(mesh)
    code, err = _run_main(capsys, mesh=mesh, data=tmp_path / "nodata")
    assert code == 2 and "nodata" in err and err.count("\n") == 1
    code, err = _run_main(capsys, mesh=mesh, data=tmp_path)
    assert code == 2 and "mesh_Gt.ply" in err and err.count("\n") == 1


def test_cli_unreadable_mesh_subprocess(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    trimesh.creation.box().export(data / "mesh_Gt.ply")
    bad = tmp_path / "bad.ply"
    bad.write_bytes(b"ply\nformat garbage\n\x00\x01")
    out = tmp_path / "metrics.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "pmni_method.scripts.eval", "--mesh", str(bad), "--data", str(data),
         "--output", str(out)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.ply" in lines[0] and "Traceback" not in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".metrics.json*"))


# --------------------------------------------------------------------------------------------------------------------
# Dataset level (generated datasets from tests/conftest.py)
# --------------------------------------------------------------------------------------------------------------------


def _check_self_evaluation(data_dir: Path, heldout=(0, 3)) -> dict:
    from pmni_method.evaluation import evaluate

    m = evaluate(data_dir / "mesh_Gt.ply", data_dir, heldout_views=heldout)
    json.dumps(m, allow_nan=False)
    geo, nrm = m["geometry"], m["normals"]
    assert geo["chamfer"] == 0.0 and geo["fscore"] == 1.0
    assert geo["num_pred_points"] == geo["num_gt_points"] > 0
    # The poses went npz -> normalised -> world; a wrong conversion would shift the silhouettes off the masks.
    assert nrm["all"]["hit_fraction"] == pytest.approx(1.0, abs=1e-3)
    assert nrm["all"]["silhouette_iou"] == pytest.approx(1.0, abs=1e-3)
    # Same (interpolated) normals as the generator; what remains is float32 EXR storage and the generator nudging
    # normals that lean away at silhouettes.
    assert nrm["all"]["mae_deg"] < 0.01
    assert nrm["heldout"]["mae_deg"] < 0.01 and nrm["heldout_views"] == list(heldout)
    return m


def test_dataset_self_evaluation_sphere(sphere_dir):
    _check_self_evaluation(sphere_dir)


def test_dataset_self_evaluation_bunny_mm(bunny_dir):
    m = _check_self_evaluation(bunny_dir)
    assert m["geometry"]["gt_bbox_diagonal"] > 50.0  # millimetres: the stored world units are used as they are


def test_dataset_offset_sphere_in_world_units(sphere_dir, tmp_path):
    d = 0.05
    mesh = tmp_path / "bigger.ply"
    trimesh.creation.icosphere(subdivisions=5, radius=1.0 + d).export(mesh)
    from pmni_method.evaluation import evaluate

    m = evaluate(mesh, sphere_dir, threshold=0.5 * d)["geometry"]
    # The GT is a coarse icosphere (subdivision 3): its faces sit up to ~1 % of r inside the unit sphere.
    assert m["chamfer"] == pytest.approx(d, rel=0.15)
    assert m["fscore"] < 0.05
    assert evaluate(mesh, sphere_dir, threshold=3 * d)["geometry"]["fscore"] > 0.99


def test_cli_writes_json(sphere_dir, tmp_path, capsys):
    out = tmp_path / "sub" / "metrics.json"
    code = main(EvalConfig(mesh=sphere_dir / "mesh_Gt.ply", data=sphere_dir, heldout_views=(1,), output=out))
    assert code == 0
    metrics = json.loads(out.read_text())
    assert metrics["geometry"]["fscore"] == 1.0 and metrics["units"]["angle"] == "degrees"
    assert "Chamfer" in capsys.readouterr().out


def test_cli_unknown_heldout_view(sphere_dir, tmp_path, capsys):
    code, err = _run_main(capsys, mesh=sphere_dir / "mesh_Gt.ply", data=sphere_dir, heldout_views=(99,))
    assert code == 2 and "99" in err and err.count("\n") == 1


def test_dataset_with_noisy_poses_is_evaluated_with_true_poses(sphere_mesh_path, tmp_path):
    from pmni_method.evaluation import evaluate
    from pmni_method.synth import SynthConfig, render_dataset

    data = render_dataset(
        SynthConfig(
            mesh=sphere_mesh_path, output=tmp_path / "noisy", num_views=4, width=48, height=48, focal=354.0,
            pose_rotation_noise_deg=3.0, pose_translation_noise=0.02,
        )
    )
    assert (data / "cameras_gt.npz").is_file()
    m = evaluate(data / "mesh_Gt.ply", data)
    assert m["reference_poses"].startswith("cameras_gt")
    # With the stored (perturbed) poses the rendered silhouettes would miss the masks by several pixels.
    assert m["normals"]["all"]["silhouette_iou"] == pytest.approx(1.0, abs=1e-3)
    assert m["normals"]["all"]["mae_deg"] < 0.01 and m["geometry"]["chamfer"] == 0.0


# --------------------------------------------------------------------------------------------------------------------
# Silent nonsense: meshes in the wrong units or frame, non-finite vertices; where a mesh came from
# --------------------------------------------------------------------------------------------------------------------


def _moved_gt(sphere_dir: Path, path: Path, transform: np.ndarray) -> Path:
    mesh = trimesh.load(sphere_dir / "mesh_Gt.ply", force="mesh", process=False)
    mesh.apply_transform(transform)
    mesh.export(path)
    return path


def _scale(s: float) -> np.ndarray:
    return np.diag([s, s, s, 1.0])


def _run_eval(capsys, **kwargs) -> tuple[int, str, str]:
    code = main(EvalConfig(**kwargs))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "case, transform",
    [
        ("metres-vs-mm", _scale(1e-3)),  # a mesh in metres against millimetre data: a speck no ray meets
        ("wrong-frame", trimesh.transformations.translation_matrix([50.0, 0.0, 0.0])),
    ],
)
def test_cli_refuses_a_mesh_no_mask_pixel_hits(sphere_dir, tmp_path, capsys, case, transform):
    from pmni_method.data.diligent_mv import load_diligent_mv

    mesh = _moved_gt(sphere_dir, tmp_path / f"{case}.ply", transform)
    out = tmp_path / "metrics.json"
    code, _, err = _run_eval(capsys, mesh=mesh, data=sphere_dir, output=out)
    num_mask = int(np.count_nonzero(load_diligent_mv(sphere_dir, load_depth=False).masks))

    def box(path: Path) -> str:
        lo, hi = trimesh.load(path).bounds
        return "[" + ", ".join(f"{x:.3g}" for x in lo) + "]..[" + ", ".join(f"{x:.3g}" for x in hi) + "]"

    assert code == 2 and err == (
        f"pmni-eval: error: {mesh}: the mesh is hit by 0 of {num_mask} mask pixels; its bounding box {box(mesh)} "
        f"vs the ground truth's {box(sphere_dir / 'mesh_Gt.ply')}: wrong units or frame?\n"
    )
    assert not out.exists()


def test_cli_warns_about_a_mesh_a_thousand_times_too_big(sphere_dir, tmp_path, capsys):
    # The cameras sit inside the blown-up sphere and hit it from within: every mask pixel "hits".
    mesh = _moved_gt(sphere_dir, tmp_path / "mm-vs-m.ply", _scale(1e3))
    code, _, err = _run_eval(capsys, mesh=mesh, data=sphere_dir, output=tmp_path / "m.json")
    assert code == 0
    warnings = [line for line in err.splitlines() if line.startswith("pmni-eval: warning: ")]
    assert len(warnings) == 1 and "wrong units?" in warnings[0]
    assert f"{mesh}: its bounding-box diagonal is 1e+03 times the ground truth's" in warnings[0]
    assert json.loads((tmp_path / "m.json").read_text())["warnings"] == [warnings[0][len("pmni-eval: warning: "):]]


def test_placement_warns_when_few_mask_pixels_hit():
    from pmni_method.evaluation import check_placement

    gt = trimesh.creation.icosphere(subdivisions=2)
    assert check_placement(gt, gt, 900, 1000, "m.ply") == []
    (few,) = check_placement(gt, gt, 100, 1000, "m.ply")
    assert few.startswith("m.ply: only 100 of 1000 mask pixels (10 %) hit the mesh;")
    assert check_placement(gt, gt, 0, 1000, "m.ply", require_hits=False)[0].startswith("m.ply: only 0 of 1000")


def test_cli_refuses_non_finite_vertices(sphere_dir, tmp_path, capsys):
    mesh = trimesh.load(sphere_dir / "mesh_Gt.ply", force="mesh", process=False)
    vertices = mesh.vertices.copy()
    vertices[[3, 7]] = [[np.nan, 0.0, 0.0], [0.0, np.inf, 0.0]]
    path = tmp_path / "nan.ply"
    trimesh.Trimesh(vertices, mesh.faces, process=False).export(path)
    code, _, err = _run_eval(capsys, mesh=path, data=sphere_dir)
    assert code == 2
    assert err == f"pmni-eval: error: {path}: 2 of {len(vertices)} vertices are not finite (NaN or Inf)\n"


@pytest.mark.parametrize("finished", [True, False])
def test_cli_reports_the_run_a_mesh_came_from(sphere_dir, tmp_path, capsys, finished):
    from pmni_method.export import write_mesh_atomic

    source = {"run": "outputs/s/pmni-fast/t/config.yml", "checkpoint": "outputs/s/pmni-fast/t/nerfstudio_models/"
              "step-000000449.ckpt", "step": 449, "max_num_iterations": 900, "finished": finished}
    mesh = write_mesh_atomic(trimesh.load(sphere_dir / "mesh_Gt.ply", force="mesh"), tmp_path / "m.ply", source=source)
    out = tmp_path / "m.json"
    code, printed, err = _run_eval(capsys, mesh=mesh, data=sphere_dir, output=out)
    assert code == 0
    metrics = json.loads(out.read_text())
    assert metrics["source"] == source and metrics["geometry"]["fscore"] == 1.0
    assert "449 of 900" in printed
    if finished:
        assert err == "" and metrics["warnings"] == []
    else:
        assert err == (
            f"pmni-eval: warning: {mesh}: the mesh comes from a run that did not finish (checkpoint step 449 of 900)\n"
        )

    plain = tmp_path / "plain.ply"
    trimesh.load(sphere_dir / "mesh_Gt.ply", force="mesh").export(plain)
    code, _, _ = _run_eval(capsys, mesh=plain, data=sphere_dir, output=out)
    assert code == 0 and json.loads(out.read_text())["source"] is None
