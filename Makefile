# Two commands do everything on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WBCVAE := $(VENV)/bin/wbcvae
EXTRAS ?= dev
# Reinstall when the dependencies or their locked versions change.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | cksum | cut -d' ' -f1)
SHARED_DATA ?= ../shared/data
DEMO_DIR ?= demo
# Quiet pip's notes about the machine's empty local indexes; real errors still fail the target.
PIP_FILTER := grep -v -e "is ignored: it is neither a file nor a directory" || true

.PHONY: help setup lock test test-all demo kinetics-world train-image train-rna segment features align trajectory bench quality pbc-quality pbc-train pbc-pretrained align-real readme-figures clean

help:
	@echo "make demo    - set up, then run the whole pipeline on the embedded synthetic world"
	@echo "make kinetics-world - the demo's pipeline on a world with 10,000 RNA cells: gene kinetics at scale (~20 min)"
	@echo "make test    - set up, then run the fast test suite (make test-all adds the slow tests)"
	@echo "make setup   - create $(VENV) and install wbcvae into it at the versions in requirements.lock (idempotent)"
	@echo "make lock    - rewrite requirements.lock from the versions installed in $(VENV) (after the tests pass)"
	@echo "make train-image | train-rna | segment | features | align | trajectory | bench"
	@echo "make quality      - held-out reconstruction and kNN accuracy of the demo's β-VAEs (after make demo)"
	@echo "make pbc-quality  - the same for an image β-VAE on one source, SOURCE=$(SHARED_DATA)/pbc_sample (segment, features, train)"
	@echo "make pbc-train    - image β-VAE on the 3,000 pbc_train crops, tested on pbc_sample (about an hour on 2 CPU cores)"
	@echo "make pbc-pretrained - the same, Mask R-CNN started from a ResNet pretrained on pbc_train's cell types (~1 h)"
	@echo "make align-real   - align the pbc-train image β-VAE onto the demo's van Galen RNA β-VAE (after both)"

setup: $(STAMP)

$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing wbcvae and its dependencies into $(VENV) (first time: a few minutes)"
	@$(PY) -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[$(EXTRAS)]' 2>&1 | $(PIP_FILTER)
	@$(PY) -c "import wbcvae, torch, torchvision, lightning" && rm -f $(VENV)/.installed-* && touch $@

# requirements.lock pins what `make setup` installs to the versions the tests passed with; pyproject.toml keeps
# open ranges. After changing a dependency: `make setup` (or pip install -U … in $(VENV)), `make test`, `make lock`.
lock:
	$(PY) .ci/lock.py $(EXTRAS) > requirements.lock.tmp && mv requirements.lock.tmp requirements.lock

test: setup
	$(PY) -m pytest -q -m "not slow"

test-all: setup
	$(PY) -m pytest -q

# Stand-alone stages share the demo's world and folders; CONFIG=… and ARGS="…" override.
WORLD := $(DEMO_DIR)/world
latest = $$(ls -td $(1)/version_*/checkpoints/last.ckpt 2>/dev/null | head -1)

demo: setup
	@if [ -d $(SHARED_DATA)/pbc_sample ]; then $(WBCVAE) data summary $(SHARED_DATA)/pbc_sample; \
	 else echo "skipping pbc_sample summary: $(SHARED_DATA)/pbc_sample not found"; fi
	@if [ -d $(SHARED_DATA)/vangalen2019 ]; then $(WBCVAE) data summary $(SHARED_DATA)/vangalen2019; \
	 else echo "skipping van Galen summary: $(SHARED_DATA)/vangalen2019 not found"; fi
	$(WBCVAE) pipeline --config experiments/pipeline/demo.yaml --out $(DEMO_DIR) $(ARGS)

# The demo's pipeline on a world with 10,000 RNA cells (the demo has 6,000): gene kinetics at a scale where the
# cells can pin them (issue 10's larger world; about 20 min on 2 CPU cores). Report: runs/kinetics_world/report/.
kinetics-world: setup
	$(WBCVAE) pipeline --config experiments/pipeline/demo.yaml --out runs/kinetics_world \
	  --set world.rna_cells=10000 --set real_rna.source=null $(ARGS)

$(WORLD)/manifest.csv: | setup
	$(WBCVAE) data synth $(WORLD) --cells-per-class 24 --rna-cells 6000 --seed 0

segment: setup $(WORLD)/manifest.csv
	$(WBCVAE) segment train --config $(or $(CONFIG),experiments/segmentation/cpu.yaml) $(ARGS)

features: setup $(WORLD)/manifest.csv
	$(WBCVAE) features $(WORLD) --checkpoint runs/segment/maskrcnn.ckpt --store runs/features/world $(ARGS)

train-image: setup
	$(WBCVAE) train image --config $(or $(CONFIG),experiments/image_vae/laptop.yaml) $(ARGS)

train-rna: setup $(WORLD)/manifest.csv
	$(WBCVAE) train rna --config $(or $(CONFIG),experiments/rna_vae/laptop.yaml) $(ARGS)

align: setup
	$(WBCVAE) align --config $(or $(CONFIG),experiments/alignment/synthetic.yaml) \
	  --image-ckpt "$(call latest,runs/image_vae)" --rna-ckpt "$(call latest,runs/rna_vae)" $(ARGS)

trajectory: setup
	$(WBCVAE) trajectory --ckpt "$(call latest,runs/alignment)" --truth $(WORLD) $(ARGS)

bench: setup
	$(PY) bench/bench_features.py $(ARGS)
	$(PY) bench/bench_training.py $(ARGS)

# Held-out quality of every β-VAE `make demo` trained (README, "How good are the β-VAEs?").
quality: setup
	$(PY) bench/vae_quality.py --pipeline $(DEMO_DIR) --out runs/quality/demo

# The same on real crops: Mask R-CNN on pseudo-masks, RoIAlign features, the image β-VAE, its quality and figure
# (under runs/quality/NAME; `make readme-figures` copies the README's). Any crop folder: make pbc-quality SOURCE=…
PBC := $(SHARED_DATA)/pbc_sample
PBC_TRAIN := $(SHARED_DATA)/pbc_train
SOURCE ?= $(PBC)
NAME = $(notdir $(patsubst %/,%,$(SOURCE)))
SEGMENT_PSEUDO := --set data.targets=pseudo --set "data.fractions=[0.9, 0.1, 0.0]" --set trainer.max_steps=150 --set trainer.max_time=null
runs/segment-pbc/maskrcnn.ckpt: | setup
	$(WBCVAE) segment train --source $(PBC) --out runs/segment-pbc $(SEGMENT_PSEUDO)

pbc-quality: setup runs/segment-pbc/maskrcnn.ckpt
	$(WBCVAE) features $(SOURCE) --checkpoint runs/segment-pbc/maskrcnn.ckpt --store runs/features/$(NAME)
	$(WBCVAE) train image --config experiments/image_vae/laptop.yaml --config experiments/image_vae/pbc_sample.yaml \
	  --data.store_dir runs/features/$(NAME) --run_name image_vae_$(NAME) --wandb false $(ARGS)
	$(PY) bench/vae_quality.py "$(call latest,runs/image_vae_$(NAME))" --out runs/quality/$(NAME) \
	  --figure runs/quality/$(NAME)/reconstructions.png

# Real crops at a useful scale: Mask R-CNN on pbc_train's pseudo-masks, the features of pbc_train and pbc_sample,
# the image β-VAE on pbc_train (its own validation split), tested on pbc_sample, a source it never saw. About an
# hour on 2 CPU cores; the paper-scale GPU training is experiments/image_vae/pbc_train_gpu.yaml.
# A variant in a folder of its own: make pbc-train PBC_RUN=runs/pbc_types SEGMENT_ARGS="--set model.cell_types=true"
PBC_RUN := runs/pbc_train
SEGMENT_ARGS :=
FEATURE_ARGS :=
PBC_IMAGE_CONFIGS := --config experiments/image_vae/laptop.yaml --config experiments/image_vae/pbc_train.yaml
$(PBC_RUN)/segment/maskrcnn.ckpt: | setup
	$(WBCVAE) segment train --source $(PBC_TRAIN) --out $(PBC_RUN)/segment $(SEGMENT_PSEUDO) $(SEGMENT_ARGS)

pbc-train: setup $(PBC_RUN)/segment/maskrcnn.ckpt
	$(WBCVAE) features $(PBC_TRAIN) --checkpoint $(PBC_RUN)/segment/maskrcnn.ckpt --store $(PBC_RUN)/features/pbc_train $(FEATURE_ARGS)
	$(WBCVAE) features $(PBC) --checkpoint $(PBC_RUN)/segment/maskrcnn.ckpt --store $(PBC_RUN)/features/pbc_sample $(FEATURE_ARGS)
	$(WBCVAE) train image $(PBC_IMAGE_CONFIGS) --wandb false --data.init_args.store_dir $(PBC_RUN)/features/pbc_train \
	  --trainer.default_root_dir $(PBC_RUN) $(ARGS)
	$(PY) bench/vae_quality.py "$(call latest,$(PBC_RUN)/image_vae)" --test-store $(PBC_RUN)/features/pbc_sample \
	  --out $(PBC_RUN)/quality --figure $(PBC_RUN)/quality/reconstructions.png

# The same with Mask R-CNN started from a ResNet that first learnt to name pbc_train's labelled cell types
# (`wbcvae segment pretrain`, random init, nothing downloaded; its body then stays frozen): make pbc-pretrained
# (about an hour alone on 2 CPU cores, 90 min beside other work; the pretraining alone 23–40 min). Its crops are
# read in their canonical pose (each nucleus turned one way, `wbcvae features --pose canonical`): the decoded path's
# nucleus then segments (README)
PRETRAINED_RUN := runs/pbc_pretrained
PRETRAINED_FEATURE_ARGS := --pose canonical
PRETRAINED_WEIGHTS := $(PRETRAINED_RUN)/backbone/resnet18.pth
$(PRETRAINED_WEIGHTS): | setup
	$(WBCVAE) segment pretrain $(PBC_TRAIN) --out $@ --test $(PBC)

pbc-pretrained: $(PRETRAINED_WEIGHTS)
	$(MAKE) pbc-train PBC_RUN=$(PRETRAINED_RUN) \
	  SEGMENT_ARGS="--set model.weights=$(PRETRAINED_WEIGHTS) --set model.norm=frozen --set model.trainable_layers=0" \
	  FEATURE_ARGS="$(PRETRAINED_FEATURE_ARGS)" PBC_IMAGE_CONFIGS="$(PBC_IMAGE_CONFIGS) --config experiments/image_vae/pbc_pretrained.yaml"

# Real crops onto real marrow RNA: the pbc-quality image β-VAE, the demo's van Galen RNA β-VAE.
align-real: setup
	$(WBCVAE) align --config experiments/alignment/real_pbc_vangalen.yaml --no-wandb \
	  --image-ckpt "$(call latest,$(PBC_RUN)/image_vae)" --features $(PBC_RUN)/features/pbc_train \
	  --rna-ckpt "$$(ls -t $(DEMO_DIR)/real_rna/*/version_*/checkpoints/best-*.ckpt | head -1)" $(ARGS)

# The README's trajectory figures, from the demo's report folder.
FIGURES := docs/img/trajectories
readme-figures:
	@mkdir -p $(FIGURES)
	@run=$$(ls -td $(DEMO_DIR)/alignment/*/version_* | head -1); \
	 for preset in granulopoiesis monocytopoiesis neutrophil_maturation; do \
	   cp $$run/trajectories/$$preset/strip.png $(FIGURES)/$$preset-strip.png; \
	   cp $$run/trajectories/$$preset/heatmap.png $(FIGURES)/$$preset-heatmap.png; \
	   cp $$run/trajectories/$$preset/paths.png $(FIGURES)/$$preset-paths.png; \
	 done; cp $$run/joint_latent.png $(FIGURES)/joint_latent.png
	cp $(DEMO_DIR)/real_rna/trajectory/HSC_to_Mono/markers.png $(FIGURES)/vangalen-HSC_to_Mono-markers.png
	cp $(DEMO_DIR)/real_rna/trajectory/HSC_to_Mono/markers_dpt.png $(FIGURES)/vangalen-HSC_to_Mono-markers_dpt.png
	cp $(DEMO_DIR)/real_rna/trajectory/HSC_to_Mono/heatmap.png $(FIGURES)/vangalen-HSC_to_Mono-heatmap.png
	@if command -v chromium >/dev/null; then chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
	   --disable-background-networking --disable-component-update --disable-sync --user-data-dir=$$(mktemp -d) \
	   --hide-scrollbars --window-size=1100,1000 --screenshot=docs/img/report.png file://$(abspath $(DEMO_DIR))/report/index.html 2>/dev/null; \
	 else echo "skipping docs/img/report.png: no chromium (apt-get install chromium)"; fi
	@if [ -f $(PBC_RUN)/quality/reconstructions.png ]; then cp $(PBC_RUN)/quality/reconstructions.png docs/img/pbc_reconstructions.png; \
	 else echo "skipping docs/img/pbc_reconstructions.png: run make pbc-train first"; fi

clean:
	rm -rf $(DEMO_DIR) runs .pytest_cache
