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
