"""The main render shapes, their golden files and the full values file (tests/test_render.py checks them;
tests/test_controlplane.py applies them to a real API server)."""

from __future__ import annotations

from pathlib import Path

GOLDEN = Path(__file__).parent / "golden"
FULL_VALUES = str(Path(__file__).parent / "values" / "full.yaml")

SHAPES = {
    "cpu": ["--cpu-nodes", "2"],
    "gpu": ["--gpu-nodes", "4"],
    "kind": ["--preset", "kind"],
    "gke-mixed-autoscaling": ["--preset", "gke-gpu", "--gpu-nodes", "2:8", "--cpu-nodes", "1", "--gpus-per-node", "2"],
    "eks-raycluster": ["--preset", "eks-gpu", "--raycluster", "--name", "eks-cluster"],
    "full-values": ["-f", FULL_VALUES, "--task", "image-classification", "--model", "google/vit-base-patch16-224",
                    "--model", "microsoft/resnet-50", "--input", "s3://bucket/images", "--output", "s3://bucket/out",
                    "--batch-size", "64", "--max-error-fraction", "0.05"],
}
