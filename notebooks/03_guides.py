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
# # 3. Stage (ii): sparse-projected guides
#
# With the backbone and the dictionary frozen, SPG learns only a `4 x C` coefficient matrix
# `Theta`. Each guide is a **non-negative combination of dictionary atoms**, `g = relu(Theta) D`:
#
# | guide | compared with | role |
# |---|---|---|
# | 0 global-normal, 1 global-anomaly | the global token | image-level head (cross-entropy on the two cosines) |
# | 2 local-normal, 3 local-anomaly | every patch token | `softmax([cos(x_t, g_2), cos(x_t, g_3)] / tau)` gives the normal / anomaly maps |
#
# The maps are upsampled to the input size and trained with a focal loss and two Dice losses
# against the auxiliary masks; an L1 penalty on the coefficients (or a hard top-n constraint) keeps
# each guide a combination of few atoms. The evaluated model is an exponential moving average of
# `Theta`.

# %% tags=["parameters"]
preset = "default"
backbone = "efficientnet_lite2"
weights = None
aux = "synthetic"
target = "synthetic"
cache_dir = None
figures_dir = "figures"
overrides = None
tau = None
sparsity = None
l1_coef = None
top_n = None
lr = None
batch_images = None
epochs = None
ema_decay = None
seed = None
n_top_atoms = 20

# %%
from spg import notebook as nb
from spg import analysis, viz
from spg.pipeline import extract, train_guides_stage, train_sae_stage

stage = dict(tau=tau, sparsity=sparsity, l1_coef=l1_coef, top_n=top_n, lr=lr,
             batch_images=batch_images, epochs=epochs, ema_decay=ema_decay,
             seed=seed)
cfg = nb.make_config(preset, backbone, weights, aux, target, cache_dir,
                     overrides, guides=stage)
nb.settings(cfg, "guides")

# %% [markdown]
# ## Training
#
# The auxiliary tokens and the SAE come from the cache (they are computed now if they are missing).

# %%
aux_tokens = extract(cfg, "aux")
sae = train_sae_stage(aux_tokens, cfg.sae, cfg.cache_dir)
guides = train_guides_stage(aux_tokens, sae, cfg.guides, cfg.cache_dir)
head = guides.head

# %% [markdown]
# Mean of each loss per epoch (of the trained, not the averaged, coefficients): cross-entropy of the
# image-level head (`detection`), focal and Dice losses of the maps, the L1 term and their sum.

# %%
losses = ["total", "detection", "focal", "dice", "sparsity"]
losses = [name for name in losses if name in guides.history]
fig = viz.training_curves(guides.history, losses)
nb.show_figure(fig, guides.history, "03_guide_training", figures_dir)

# %% [markdown]
# ## How sparse are the guides?
#
# For each guide: the L1 norm of its coefficients, the number of atoms with a non-zero coefficient
# and how many of the top atoms hold 50%, 90% and 99% of its L1 mass (out of
# the living atoms of the dictionary).

# %%
nb.show_table(analysis.sparsity_table(head), "03_guide_sparsity", figures_dir)

# %%
mass = analysis.mass_table(head)
nb.show_figure(viz.mass_curves(mass), mass, "03_guide_mass", figures_dir)

# %% [markdown]
# The atoms with the largest coefficients in the local-anomaly guide, the one that produces the
# anomaly maps (chapter 5 looks at what they respond to).

# %%
top = analysis.top_coefficients(head, guide=3, n=n_top_atoms)
fig = viz.bars(top, "label", "coefficient", horizontal=True,
               title="Local-anomaly guide: largest coefficients")
nb.show_figure(fig, top, "03_guide_top_atoms", figures_dir)

# %% [markdown]
# Cosine similarity between the four guide vectors. The two local guides must point in different
# directions for the softmax to separate normal from anomalous patches.

# %%
cosines = analysis.guide_cosines(head)
fig = viz.heatmap(cosines, "Cosine similarity of the guides",
                  cbar_label="cosine", vmin=-1)
nb.show_figure(fig, cosines, "03_guide_cosines", figures_dir)

# %% [markdown]
# ## Anomaly maps on auxiliary images
#
# The maps of the trained guides (blurred with the evaluation's `blur_sigma`) on auxiliary images,
# i.e. on the **training** categories: a sanity check that the guides fit, not a measure of
# zero-shot performance (that is chapter 4). One normal and one anomalous image per category.

# %%
shown = analysis.pick_examples(aux_tokens, 1, 1)
maps = analysis.maps_for(aux_tokens, head, shown["index"],
                         cfg.eval.blur_sigma)
images, masks, titles = analysis.panels(aux_tokens, shown)
fig = viz.map_rows(images, masks, maps, titles,
                   suptitle="Anomaly maps on auxiliary (training) images")
nb.show_figure(fig, shown.assign(map_max=maps.max((1, 2))), "03_aux_maps",
               figures_dir)
