"""The GPU code path on a real CUDA GPU: the predictor in bf16 with pinned-memory, non-blocking copies,
a real CUDA out-of-memory error halving the micro-batch, the precision check, and the plan made from
nvidia-smi's readings. Marked `gpu`; they skip where torch sees no GPU (benchmarks/gpu_check.py runs
them on a GPU machine: BENCHMARKS.md)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import tiny

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: torch.cuda.is_available() is False"),
]
IMAGE_SCHEMA = pa.schema([("label", pa.string()), ("score", pa.float32()), ("error", pa.string())])


def _image_spec(model: str, device: str, precision: str, batch_size: int):
    from transformers import AutoImageProcessor

    from inferkit.job.tasks import ModelSpec, normalization_of

    processor = AutoImageProcessor.from_pretrained(model, backend="pil")
    return ModelSpec(task="image-classification", models=(model,), ensemble="max-confidence", device=device,
                     precision=precision, threads=1, batch_size=batch_size, channels_last=True,
                     trust_remote_code=False, text_column="text", passthrough=(), output_schema=IMAGE_SCHEMA,
                     normalization=(normalization_of(processor),), labels=(tiny.LABELS,)), processor


def _decoded(processor, count: int) -> pa.Table:
    from inferkit.job.tasks import decode_images, processor_shape

    images = [tiny.image_bytes("RGB", "JPEG", seed=i) for i in range(count)]
    batch = pa.table({"image": images, "error": pa.nulls(count, pa.string())})
    return decode_images(batch, processors=[processor], shapes=[processor_shape(processor)], image_column="image")


def test_gpu_predictor_agrees_with_cpu(tiny_models):
    from inferkit.job.tasks import Predictor

    cpu_spec, processor = _image_spec(tiny_models["resnet"], "cpu", "fp32", 8)
    batch = _decoded(processor, 24)
    reference = Predictor(cpu_spec)(batch)
    for precision, enough in (("fp32", 1.0), ("bf16", 0.9)):  # bf16 may flip a near tie of a random model
        gpu = Predictor(_image_spec(tiny_models["resnet"], "gpu", precision, 8)[0])
        assert next(gpu.models[0].parameters()).device.type == "cuda"
        out = gpu(batch)
        assert out.column("error").null_count == 24
        same = sum(a == b for a, b in zip(out.column("label").to_pylist(), reference.column("label").to_pylist(),
                                          strict=True))
        assert same / 24 >= enough, (precision, same)


def test_a_real_cuda_out_of_memory_halves_the_micro_batch(tiny_models):
    """The allocator is capped a little above what the model holds: 512 images at 224x224 cannot be
    converted to floats at once, and the predictor must halve until a micro-batch fits, losing no row."""
    from inferkit.job.tasks import Predictor

    spec, _ = _image_spec(tiny_models["resnet"], "gpu", "fp32", 512)
    predictor = Predictor(spec)
    rows = 512
    pixels = np.random.default_rng(0).integers(0, 255, (rows, 3, 224, 224), dtype=np.uint8)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    cap = torch.cuda.memory_reserved() + 160 * 2**20  # a whole batch in fp32 needs 308 MiB for its input alone
    torch.cuda.set_per_process_memory_fraction(cap / total)
    try:
        with pytest.raises(torch.cuda.OutOfMemoryError):  # the cap is real: one full batch fails
            torch.empty((rows, 3, 224, 224), dtype=torch.float32, device="cuda")
        results = predictor._predict({"pixels_0": pixels}, list(range(rows)))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert len(results) == rows and all(label in tiny.LABELS.values() for label, _ in results)
    assert predictor.oom_halvings >= 1 and predictor.micro_batch < rows


def test_precision_check_on_the_gpu(tiny_models):
    from inferkit.job.tasks import ModelSpec, check_precision

    schema = pa.schema([("embedding", pa.list_(pa.float32())), ("error", pa.string())])
    spec = ModelSpec(task="embedding", models=(tiny_models["embedder"],), ensemble="mean", device="gpu",
                     precision="bf16", threads=1, batch_size=8, channels_last=False, trust_remote_code=False,
                     text_column="text", passthrough=(), output_schema=schema)
    texts = [" ".join(tiny.WORDS[i:i + 6]) for i in range(16)]
    result = check_precision(spec, pa.table({"text": texts, "error": pa.nulls(16, pa.string())}))
    assert result["rows"] == 16 and result["agreement"] >= 0.99, result


def test_plan_from_the_real_gpu_readings():
    from inferkit.chart import default_run_options
    from inferkit.job.plan import ClusterResources, ModelProfile, NodeResources, make_plan
    from inferkit.job.resources import probe_node

    facts = probe_node()
    assert facts["gpus"], "nvidia-smi reports no GPU where torch sees one"
    name, memory, bf16 = facts["gpus"][0]
    assert name == torch.cuda.get_device_name(0)
    assert abs(memory - torch.cuda.get_device_properties(0).total_memory) < 0.02 * memory  # the driver keeps some
    assert bf16 == (torch.cuda.get_device_capability(0)[0] >= 8)
    node = NodeResources("gpu-node", cpus=facts["real_cpus"], real_cpus=facts["real_cpus"], memory_bytes=64 * 2**30,
                         gpus=len(facts["gpus"]), gpu_type=name, gpu_memory_bytes=memory, gpu_bf16=bf16)
    profile = ModelProfile(input_kind="image", parameter_bytes=100 * 2**20, convolutional=True)
    plan = make_plan(ClusterResources((node,)), profile, default_run_options())
    assert plan.device == "gpu" and plan.num_gpus_per_actor == 1 and plan.actors_max == len(facts["gpus"])
    assert plan.precision == ("bf16" if bf16 else "fp32") and plan.batch_size >= 64
