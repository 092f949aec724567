# Shortcuts; each target is one command you can also run by hand. Images are built by scripts/kind.sh,
# which sets ARCH_SUFFIX and --platform from `uname -m` (Ray's arm64 images end in -aarch64).
.PHONY: test image-cpu image-gpu image-standin kind-up kind-image kind-load kind-submit kind-check kind-down kind-e2e kind-versions bench gpu-check-pack

test:
	bash .ci/run

image-cpu:
	scripts/kind.sh image cpu

image-gpu:
	scripts/kind.sh image gpu

# Where no image registry answers: the CPU image on a stand-in for Ray's base (scripts/images.sh).
image-standin:
	scripts/images.sh job cpu

kind-up:
	scripts/kind.sh up
kind-image:
	scripts/kind.sh image cpu
kind-load:
	scripts/kind.sh load
kind-submit:
	scripts/kind.sh submit
kind-check:
	scripts/kind.sh check
kind-down:
	scripts/kind.sh down
kind-versions:
	scripts/kind.sh versions
# The whole kind path: cluster, operator, image, RayJob, output check (then `make kind-down`).
kind-e2e:
	scripts/kind.sh all

bench:
	.venv/bin/pip install -q -e '.[bench]' && .venv/bin/python benchmarks/bench_inference.py

# The wheels benchmarks/gpu_check.py carries to a GPU machine without network, in parts (BENCHMARKS.md).
gpu-check-pack:
	.venv/bin/python benchmarks/gpu_check.py pack
