# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 1. Features: what the frozen backbone sees
#
# SPG never trains its backbone. A frozen vision model turns every image into a grid of **patch
# tokens** (one vector per image region) and one **global token**; everything learnable in SPG
# works on these vectors. This chapter shows the backbone, its preprocessing and token grid,
# extracts the tokens of the auxiliary (training) and target (zero-shot test) images into the
# cache, and gives an impression of what the tokens encode.
#
# The parameters below are papermill parameters: rerun with, e.g.,
# `papermill notebooks/01_features.ipynb out.ipynb -p backbone dinov3 -p weights /path/to/weights`.
# `None` means "the preset's value".

# %% tags=["parameters"]
preset = "default"
backbone = "efficientnet_lite2"
weights = None
aux = "synthetic"
target = "synthetic"
cache_dir = None
figures_dir = "figures"
overrides = None
batch_size = None
num_workers = None
stages = None
n_examples = 6

# %%
from spg import notebook as nb
from spg import analysis, viz
from spg.pipeline import extract, load_backbone

stage = dict(batch_size=batch_size, num_workers=num_workers, stages=stages)
cfg = nb.make_config(preset, backbone, weights, aux, target, cache_dir,
                     overrides, extract=stage)
nb.settings(cfg, "extract")

# %% [markdown]
# ## The backbone and its preprocessing
#
# Images are resized to the backbone's square input size, scaled to [0, 1] and normalised with the
# backbone's mean and standard deviation. The paper uses DINOv3 ViT-L/16 (28 x 28 tokens of
# dimension 1024 at 448 px) or OpenAI CLIP ViT-L/14-336 at 518 px; without network access this book
# uses an ImageNet EfficientNet-Lite2 whose stride-8/16/32 feature maps are resampled to the same
# 28 x 28 grid and concatenated.

# %%
model = load_backbone(cfg.extract.backbone, cfg.extract.weights)
analysis.backbone_table(model)

# %% [markdown]
# ## Extracting the tokens
#
# Every image of the auxiliary and the target dataset goes through the backbone once; global
# tokens, patch tokens (float16) and the binarised masks at input size are written to the artifact
# cache and memory-mapped by every later chapter. A progress bar appears when the tokens are not
# cached yet.

# %%
aux_tokens = extract(cfg, "aux")
target_tokens = extract(cfg, "target")
stores = {"auxiliary": aux_tokens, "target": target_tokens}
summary = analysis.store_summary(stores)
nb.show_table(summary, "01_token_stores", figures_dir)

# %% [markdown]
# The auxiliary and the target categories are disjoint: nothing from the target categories is used
# for training, model selection or normalisation (the zero-shot protocol).

# %% [markdown]
# ## The token grid
#
# Each patch token describes one cell of the grid drawn below (and, through the receptive field,
# its surroundings). The right panel shows the length of each token vector.

# %%
first = analysis.pick_examples(target_tokens, 0, 1, 1)
image, _, title = analysis.panels(target_tokens, first)
norms = analysis.token_norms(target_tokens, first["index"].iloc[0])
fig = viz.token_grid(image[0], norms, title[0])
nb.show_figure(fig, norms, "01_token_grid", figures_dir)

# %% [markdown]
# ## What the tokens capture
#
# The first three principal components of the patch tokens of a few target images, shown as red,
# green and blue. Regions that the backbone considers similar get similar colours. Each image's
# tokens are centred on their own mean and one PCA is fitted per category, on exactly the tokens
# shown. Defects that stand out in colour are already separable in token space, which is what
# SPG's guides exploit; note also the border tokens, which the CNN's padding makes different. The
# table gives each component's share of the centred token variance.

# %%
shown = analysis.pick_examples(target_tokens, 1, 1)[:n_examples]
rgb, variance = analysis.pca_rgb(target_tokens, shown)
images, _, titles = analysis.panels(target_tokens, shown)
fig = viz.paired_rows(images, rgb, titles, ("image", "token PCA as RGB"),
                      "Patch tokens, first three principal components")
nb.show_figure(fig, shown, "01_token_pca", figures_dir)
nb.show_table(variance, "01_token_pca_variance", figures_dir)

# %% [markdown]
# ## The data: auxiliary and target categories
#
# A normal image and two anomalous ones per category (one row per category); the ground-truth masks are outlined in cyan.
# SPG is trained on the auxiliary categories only (top) and evaluated on the target categories
# (bottom).

# %%
aux_examples = analysis.pick_examples(aux_tokens, 1, 2)
images, masks, titles = analysis.panels(aux_tokens, aux_examples, 224)
fig = viz.image_grid(images, titles, masks=masks, ncols=3,
                     suptitle="Auxiliary categories (training)")
nb.show_figure(fig, aux_examples, "01_aux_examples", figures_dir)

# %%
target_examples = analysis.pick_examples(target_tokens, 1, 2)
images, masks, titles = analysis.panels(target_tokens, target_examples, 224)
fig = viz.image_grid(images, titles, masks=masks, ncols=3,
                     suptitle="Target categories (zero-shot evaluation)")
nb.show_figure(fig, target_examples, "01_target_examples", figures_dir)
