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
# # 5. Which atoms make a guide?
#
# Because every guide is a non-negative combination of SAE atoms, the local-anomaly guide can be
# read off its coefficients: rank the atoms by coefficient, look at where each one fires, and count
# in how many categories it fires. Atoms that fire across many categories are *category-general*
# factors (cracks, scratches, contamination); atoms that fire in one or two are
# *category-specific*. The galleries use the **target** categories, which the guides never saw.

# %% tags=["parameters"]
preset = "default"
backbone = "efficientnet_lite2"
weights = None
aux = "synthetic"
target = "synthetic"
cache_dir = None
figures_dir = "figures"
overrides = None
n_top_atoms = 20
n_gallery_atoms = 5
max_categories = 6
min_share = 0.1

# %%
from spg import notebook as nb
from spg import analysis, viz
from spg.pipeline import extract, train_guides_stage, train_sae_stage

cfg = nb.make_config(preset, backbone, weights, aux, target, cache_dir,
                     overrides)
nb.settings(cfg, "sae", "guides")

# %%
aux_tokens = extract(cfg, "aux")
target_tokens = extract(cfg, "target")
sae = train_sae_stage(aux_tokens, cfg.sae, cfg.cache_dir)
head = train_guides_stage(aux_tokens, sae, cfg.guides, cfg.cache_dir).head

# %% [markdown]
# ## The top atoms of the local-anomaly guide

# %%
top = analysis.top_coefficients(head, guide=3, n=n_top_atoms)
fig = viz.bars(top, "label", "share of L1", horizontal=True,
               title="Local-anomaly guide: share of L1 mass per atom",
               ylabel="share of the guide's L1 mass")
nb.show_figure(fig, top, "05_top_atoms", figures_dir)

# %% [markdown]
# ## Activation galleries on the target categories
#
# One row per atom (the largest coefficients first), one column per target category: the target
# image of that category on which the atom is most active, with the atom's SAE activation on every
# patch overlaid as a heat map (each row has its own colour scale; the title gives the maximum).

# %% tags=["full-width"]
shown = top["atom"].head(n_gallery_atoms).tolist()
target_scores = analysis.atom_image_scores(sae.sae, target_tokens, top["atom"])
per_category = analysis.top_per_category(target_tokens, target_scores,
                                         top["atom"], shown, max_categories)
images, acts, names = analysis.activation_panels(
    sae.sae, target_tokens, per_category, size=224, atoms=shown)
labels = [f"atom {a}\n(rank {r})" for a, r in zip(shown, top["rank"])]
fig = viz.activation_gallery(images, acts, labels, names,
                             "Local-anomaly atoms on target images")
nb.show_figure(fig, per_category, "05_gallery", figures_dir)

# %% [markdown]
# ## Category-general and category-specific atoms
#
# For the top atoms: the share of each category's images on which the atom fires (its image score,
# the maximum activation over the patches, exceeds the SAE's `fire_threshold`), on the auxiliary
# categories (seen in training) and the target categories (not seen). An atom counts as firing in a
# category when that share is at least `min_share`.

# %% tags=["full-width"]
aux_scores = analysis.atom_image_scores(sae.sae, aux_tokens, top["atom"])
firing = analysis.category_firing(
    {"aux": aux_tokens, "target": target_tokens},
    {"aux": aux_scores, "target": target_scores},
    top["atom"], cfg.sae.fire_threshold)
matrix = analysis.firing_matrix(firing)
fig = viz.heatmap(matrix, "Share of images on which each atom fires",
                  cbar_label="share of images")
nb.show_figure(fig, matrix, "05_firing_matrix", figures_dir)

# %%
kinds = analysis.generality(firing, min_share)
fig = viz.bars(analysis.generality_long(kinds), "atom", "categories",
               hue="role", horizontal=True, ylabel="categories",
               title=f"Categories where it fires (share >= {min_share})")
nb.show_figure(fig, kinds, "05_generality", figures_dir)
nb.show_table(analysis.counts(kinds["kind"], "kind", "atoms"))

# %% [markdown]
# ## Do they fire on the defects themselves?
#
# Firing somewhere in an image is not firing on its defect. For each top atom and category: the
# rate at which it fires on defect patches (at least a quarter of the patch inside the mask),
# divided by its rate on the patches of normal images, as log2 (0: no preference; 1: twice as
# often on defects; -4: never or hardly ever on defects; blank: fires on neither). Target columns
# answer the zero-shot question: do atoms learned on the auxiliary categories pick out defects of
# categories never seen?

# %% tags=["full-width"]
defects = analysis.defect_firing(
    sae.sae, {"aux": aux_tokens, "target": target_tokens}, top["atom"],
    cfg.sae.fire_threshold)
fig = viz.heatmap(analysis.lift_matrix(defects),
                  "log2(firing rate on defect patches / on normal images)",
                  cbar_label="log2 lift", fmt=".1f", vmin=-4, vmax=4, cmap="vlag")
nb.show_figure(fig, defects, "05_defect_lift", figures_dir)

# %% [markdown]
# The share of the guide's L1 mass held by the listed atoms that fire at least twice as often on a
# category's defects as on its normal images, and the listed atoms' firing rates on defect patches
# and on normal images averaged with the guide's coefficients as weights (does the guide as a
# whole fire more on the defects?):

# %%
nb.show_table(analysis.defect_mass(defects, top), "05_defect_mass", figures_dir)

# %% [markdown]
# ## How much of the guide do the top atoms carry?
#
# The share of the local-anomaly guide's L1 mass held by its top-n atoms.

# %%
mass = analysis.mass_table(head, guides=[3])
nb.show_figure(viz.mass_curves(mass), mass, "05_mass", figures_dir)
nb.show_table(analysis.mass_at(head, guide=3), "05_mass_table", figures_dir)
