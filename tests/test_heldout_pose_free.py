"""Held-out scoring of a pose-free mesh: it lives in its own frame, so pmni-eval must align it by its refined poses.

A pose-free run's surface sits in the frame its gauge fixed (the frozen camera's start pose after recentring, or
the mean of the start poses), a few degrees and a tenth of the object's size off the true frame for 5 degrees / 5 %
of pose noise. Scored there against the true cameras, even a perfect surface misses most mask pixels of the
held-out views (issue 13: pose-free meshes read > 40 degrees held-out normal MAE).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import trimesh
from scipy.spatial.transform import Rotation

from pmni_method.data.diligent_mv import load_diligent_mv
from pmni_method.evaluation import evaluate, poses_beside
from pmni_method.poses.maths import similarity_matrix

HELDOUT = (2, 5)


def _pose_free_frame(data_dir: Path, tmp_path: Path, refined: bool = True) -> Path:
    """The true mesh in a pose-free run's frame, with the training views' poses in that frame beside it."""
    data = load_diligent_mv(data_dir, load_depth=False, data_checks="off")
    # Rigid offset of the size a noisy start leaves (normalised units: the object fills the unit sphere).
    M = similarity_matrix(1.0, Rotation.from_rotvec(np.deg2rad([4.0, -3.0, 2.0])).as_matrix(), [0.12, -0.08, 0.1])
    S = data.normalisation.scale_mat
    M_world = S @ M @ np.linalg.inv(S)
    mesh = trimesh.load(data_dir / "mesh_Gt.ply", force="mesh")
    mesh.apply_transform(M_world)
    path = tmp_path / "mesh.ply"
    mesh.export(path)
    c2w_world = data.normalisation.c2w_to_world(data.c2w)
    entries = [
        {"view": int(v), "c2w": (M_world @ c2w_world[i]).tolist(), "refined": refined}
        for i, v in enumerate(data.view_ids)
        if v not in HELDOUT
    ]
    poses_beside(path).write_text(json.dumps(entries))
    return path


def test_pose_free_mesh_is_aligned_by_the_refined_poses_beside_it(bunny_dir, tmp_path):
    mesh = _pose_free_frame(bunny_dir, tmp_path)
    m = evaluate(mesh, bunny_dir, heldout_views=HELDOUT)
    held = m["normals"]["heldout"]
    assert held["hit_fraction"] > 0.99 and held["mae_deg"] < 1.0
    assert m["poses"]["found_beside_mesh"] and m["poses"]["rotation_deg_mean"] < 1e-6
    assert any("pose-free" in w for w in m["warnings"])


def test_pose_free_mesh_scored_in_its_own_frame_misses_the_held_out_views(bunny_dir, tmp_path):
    # What pmni-eval did before it looked beside the mesh: the frame offset alone reads as a bad surface.
    mesh = _pose_free_frame(bunny_dir, tmp_path)
    held = evaluate(mesh, bunny_dir, heldout_views=HELDOUT, find_poses=False, require_hits=False)["normals"]["heldout"]
    assert held["hit_fraction"] < 0.9 or held["mae_deg"] > 10.0


def test_calibrated_poses_beside_a_mesh_do_not_move_it(bunny_dir, tmp_path):
    # A calibrated run's file holds its calibration: the mesh is in the true frame already and is scored as is.
    mesh = _pose_free_frame(bunny_dir, tmp_path, refined=False)
    m = evaluate(mesh, bunny_dir, heldout_views=HELDOUT, require_hits=False)
    assert "poses" not in m and m["alignment"] is None


def _look_at_origin(c2w: np.ndarray) -> np.ndarray:
    from pmni_method.cameras import rotation_between

    out = c2w.copy()
    for i in range(len(out)):
        turn = rotation_between(out[i, :3, 2], -out[i, :3, 3])
        out[i, :3, :3] = turn @ out[i, :3, :3]
    return out


def test_object_alignment_places_the_object_where_the_cameras_look_not_where_their_centres_are():
    from pmni_method.alignment import object_alignment
    from pmni_method.cameras import ring_poses
    from pmni_method.poses.maths import align_cameras

    true = ring_poses(20, 16.0, elevation_deg=np.full(20, 10.0))
    # Far, narrow cameras: every centre shifted sideways by 0.3 object radii, each still looking at the object.
    # The images hardly change, so a pose-free run can end like this; the centres' fit then moves the object.
    est = true.copy()
    est[:, :3, 3] += np.array([0.3, 0.0, 0.0])
    est = _look_at_origin(est)
    _, T_centres = align_cameras(est, true)
    T_object = object_alignment(est, true, centre=np.zeros(3), radius=0.5)
    assert np.linalg.norm(T_centres[:3, 3]) > 0.25
    assert np.linalg.norm(T_object[:3, 3]) < 0.02

    # Exact on a similarity of the truth, one camera turned 2 degrees notwithstanding (it is trimmed).
    S = similarity_matrix(1.3, Rotation.from_rotvec([0.1, 0.3, -0.2]).as_matrix(), [5.0, -3.0, 2.0])
    moved = np.tile(np.eye(4), (20, 1, 1))
    moved[:, :3, :3] = S[:3, :3] / 1.3 @ true[:, :3, :3]
    moved[:, :3, 3] = true[:, :3, 3] @ S[:3, :3].T + S[:3, 3]
    moved[3, :3, :3] = Rotation.from_rotvec([0.0, np.deg2rad(2.0), 0.0]).as_matrix() @ moved[3, :3, :3]
    T = object_alignment(moved, true, centre=S[:3, 3], radius=0.65)
    np.testing.assert_allclose(T @ S, np.eye(4), atol=1e-8)
