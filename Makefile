# Shortcuts; each target is one command you can also run by hand.
.PHONY: test image-cpu image-gpu kind-up kind-image kind-load kind-submit kind-check kind-down kind-e2e bench

VERSION := $(shell python3 -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['project']['version'])")

test:
	bash .ci/run

image-cpu:
	docker build -f docker/Dockerfile --build-arg FLAVOR=cpu -t ghcr.io/inferkit/inferkit:$(VERSION)-cpu .

image-gpu:
	docker build -f docker/Dockerfile --build-arg FLAVOR=gpu -t ghcr.io/inferkit/inferkit:$(VERSION)-gpu .

kind-up:
	scripts/kind.sh up
kind-image:
	scripts/kind.sh image
kind-load:
	scripts/kind.sh load
kind-submit:
	scripts/kind.sh submit
kind-check:
	scripts/kind.sh check
kind-down:
	scripts/kind.sh down
# The whole kind path: cluster, operator, image, RayJob, output check (then `make kind-down`).
kind-e2e:
	scripts/kind.sh all

bench:
	.venv/bin/pip install -q -e '.[bench]' && .venv/bin/python benchmarks/bench_inference.py
