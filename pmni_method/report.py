"""The metrics of :func:`pmni_method.evaluation.evaluate` as the table pmni-eval prints."""

from __future__ import annotations

from typing import Any, Dict, Optional


def _fmt(x: Optional[float], spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_metrics(metrics: Dict[str, Any], console: Optional[Any] = None) -> None:
    """Print the metrics from :func:`evaluate` / :func:`evaluate_arrays` as a rich table."""
    from rich.console import Console
    from rich.table import Table

    console = console if console is not None else Console()
    geo = metrics["geometry"]
    nrm = metrics["normals"]
    title = f"pmni-eval: {metrics['mesh']}" if "mesh" in metrics else "pmni-eval"
    table = Table(
        title=title,
        caption="distances in the dataset's world units (DiLiGenT-MV: mm); normal MAE over pixels the mesh hits"
        + (f"; scored against the {metrics['reference_maps']}" if metrics.get("input_maps_error") else ""),
        header_style="bold",
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("unit", style="dim")
    table.add_row("Chamfer distance", _fmt(geo["chamfer"], ".4f"), "world")
    table.add_row("  accuracy (pred -> GT)", _fmt(geo["accuracy"], ".4f"), "world")
    table.add_row("  completeness (GT -> pred)", _fmt(geo["completeness"], ".4f"), "world")
    table.add_row("Chamfer / GT bbox diagonal", _fmt(geo["chamfer_rel_bbox_percent"], ".4f"), "%")
    table.add_row(f"F-score @ {geo['threshold']:g}", _fmt(geo["fscore"], ".4f"), "0..1")
    table.add_row("  precision", _fmt(geo["precision"], ".4f"), "0..1")
    table.add_row("  recall", _fmt(geo["recall"], ".4f"), "0..1")
    table.add_row("surface samples pred / GT", f"{geo['num_pred_points']} / {geo['num_gt_points']}", "points")
    source = metrics.get("source")
    if source:
        table.add_row(
            "mesh from checkpoint step",
            f"{source.get('step', '?')} of {source.get('max_num_iterations', '?')}",
            "run finished" if source.get("finished") else "run NOT finished",
        )
    for key, label in (("all", "all views"), ("heldout", f"held-out {nrm.get('heldout_views', [])}")):
        s = nrm.get(key)
        if s is None:
            continue
        table.add_row(f"Normal MAE, {label}", _fmt(s["mae_deg"], ".3f"), f"deg ({nrm['normal_type']})")
        table.add_row("  mask pixels hit", _fmt(s["hit_fraction"], ".4f"), "0..1")
        table.add_row("  silhouette IoU", _fmt(s["silhouette_iou"], ".4f"), "0..1")
    inputs = metrics.get("input_maps_error")
    if inputs:
        # The bar of multi-view fusion: the reconstruction's normal error against the truth should be below this.
        table.add_row("Input maps' normal MAE vs truth", _fmt(inputs["normal_mae_deg"], ".3f"), "deg (training maps)")
        table.add_row("  input masks' IoU with the truth", _fmt(inputs["mask_iou"], ".4f"), "0..1")
    poses = metrics.get("poses")
    if poses is not None:
        table.add_row(
            f"Rotation error, mean / median ({len(poses['view_ids'])} views)",
            f"{poses['rotation_deg_mean']:.3f} / {poses['rotation_deg_median']:.3f}",
            "deg",
        )
        table.add_row("  relative rotation of view pairs, mean", f"{poses['relative_rotation_deg_mean']:.3f}", "deg")
        table.add_row(
            "Translation error, mean / median",
            f"{poses['translation_mean']:.4g} / {poses['translation_median']:.4g}",
            "world",
        )
        table.add_row(
            "  relative to the orbit radius",
            f"{100 * poses['translation_relative_mean']:.3f} / {100 * poses['translation_relative_median']:.3f}",
            f"% of {poses['orbit_radius']:.4g}",
        )
        table.add_row(
            "  alignment scale (estimate -> true)",
            f"{poses['alignment_scale']:.4f}",
            "mesh aligned" if poses["mesh_aligned_by_poses"] else "mesh not aligned",
        )
    refined = metrics.get("refined_alignment")
    if refined is not None:
        g, n = refined["geometry"], refined["normals"]["all"]
        table.add_row("After ICP refinement of the alignment", "", "")
        table.add_row("  Chamfer distance", _fmt(g["chamfer"], ".4f"), "world")
        table.add_row("  Chamfer / GT bbox diagonal", _fmt(g["chamfer_rel_bbox_percent"], ".4f"), "%")
        table.add_row(f"  F-score @ {g['threshold']:g}", _fmt(g["fscore"], ".4f"), "0..1")
        table.add_row("  Normal MAE, all views", _fmt(n["mae_deg"], ".3f"), "deg")
        table.add_row("  silhouette IoU", _fmt(n["silhouette_iou"], ".4f"), "0..1")
        table.add_row(
            "  ICP move: rotation / translation / scale",
            f"{refined['icp_rotation_deg']:.3f} / {refined['icp_translation']:.4g} / {refined['icp_scale']:.4f}",
            "deg / world / -",
        )
    console.print(table)
    if poses is not None:
        per_view = Table(title="pose error per view (after similarity alignment)", header_style="bold")
        for column in ("view", "rotation (deg)", "translation (world)", "translation / orbit radius (%)"):
            per_view.add_column(column, justify="right")
        for v, r, t, rel in zip(
            poses["view_ids"], poses["rotation_deg"], poses["translation"], poses["translation_relative"]
        ):
            per_view.add_row(str(v), f"{r:.3f}", f"{t:.4g}", f"{100 * rel:.3f}")
        console.print(per_view)
