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
# # 2. Stage (i): a sparse dictionary of patch tokens
#
# A TopK sparse autoencoder (SAE) is trained on the patch tokens of the auxiliary images (each
# epoch uses a random `token_fraction` of every image's tokens; the paper uses all of them). Each
# token `x` is encoded as `z = relu(topk_k(W_enc x))`, i.e. at most `k` of the `C` latents are
# active, and reconstructed as `x_hat = z D`, where the rows of `D` are unit-norm **atoms**. There
# are no biases. Latents that stop firing are pushed back into use by the AuxK loss. After
# training, atoms that never fire on the auxiliary tokens are marked dead; the guides of stage
# (ii) may only use the living ones.
#
# This chapter shows the training curves, how well the dictionary reconstructs the tokens, how
# evenly the atoms are used, and what a few atoms respond to.

# %% tags=["parameters"]
preset = "default"
backbone = "efficientnet_lite2"
weights = None
aux = "synthetic"
target = "synthetic"
cache_dir = None
figures_dir = "figures"
overrides = None
n_atoms = None
k = None
aux_k = None
aux_coef = None
dead_after_tokens = None
fire_threshold = None
lr = None
batch_images = None
epochs = None
token_fraction = None
seed = None
n_atoms_shown = 3

# %%
from spg import notebook as nb
from spg import analysis, viz
from spg.pipeline import extract, train_sae_stage

stage = dict(n_atoms=n_atoms, k=k, aux_k=aux_k, aux_coef=aux_coef,
             dead_after_tokens=dead_after_tokens,
             fire_threshold=fire_threshold, lr=lr,
             batch_images=batch_images, epochs=epochs,
             token_fraction=token_fraction, seed=seed)
cfg = nb.make_config(preset, backbone, weights, aux, target, cache_dir,
                     overrides, sae=stage)
nb.settings(cfg, "sae")

# %% [markdown]
# ## Training
#
# Tokens come from the cache written by chapter 1 (they are extracted now if they are missing);
# the trained SAE is cached too, keyed by the tokens and the settings above.

# %%
aux_tokens = extract(cfg, "aux")
sae = train_sae_stage(aux_tokens, cfg.sae, cfg.cache_dir)
nb.show_table(analysis.stats_table(sae.stats), "02_sae_stats", figures_dir)

# %% [markdown]
# Per epoch: the reconstruction error (mean squared error per token dimension), the AuxK loss of the
# dead latents reconstructing the residual (zero while no latent counts as dead), and the number of
# latents that had not fired for `dead_after_tokens` training tokens.

# %%
fig = viz.training_curves(sae.history, ["mse", "aux", "dead_latents"],
                          ["reconstruction MSE", "AuxK loss", "dead latents"])
nb.show_figure(fig, sae.history, "02_sae_training", figures_dir)

# %% [markdown]
# ## Reconstruction and sparsity
#
# One pass of the trained SAE over all auxiliary tokens: how many latents are active per token (L0,
# at most `k`), and the share of the token variance the reconstruction explains, per category.

# %%
sae_pass = analysis.sae_pass(sae.sae, aux_tokens, cfg.sae.fire_threshold)
note = f"k = {cfg.sae.k}\nmean L0 = {sae_pass.l0.mean():.1f}"
fig = viz.histogram(sae_pass.l0, "active latents per token (L0)",
                    "Sparsity of the codes", note=note,
                    bins=analysis.integer_bins(cfg.sae.k))
l0_counts = analysis.counts(sae_pass.l0, "l0", "tokens")
nb.show_figure(fig, l0_counts, "02_sae_l0", figures_dir)

# %%
overall = sae.stats["explained_variance"]
fig = viz.bars(sae_pass.categories, "category", "explained_variance",
               title=f"Explained variance (all tokens: {overall:.3f})",
               ylim=(0, 1), ylabel="explained variance")
nb.show_figure(fig, sae_pass.categories, "02_sae_explained_variance",
               figures_dir)

# %% [markdown]
# ## Atom usage
#
# How often each atom fires (activation above `fire_threshold`) on the auxiliary tokens, on a log
# scale. Dead atoms never fire and are left out of the histogram; a healthy dictionary has few of
# them and no atom that fires on almost every token.

# %%
log_freq = analysis.log_frequency(sae_pass.atoms)
n_dead = cfg.sae.n_atoms - sae.stats["n_alive"]
note = f"{len(log_freq)} atoms fire\n{n_dead} of {cfg.sae.n_atoms} dead"
fig = viz.histogram(log_freq, "log10 firing frequency (share of tokens)",
                    "Atom usage", note=note)
nb.show_figure(fig, sae_pass.atoms, "02_sae_atom_usage", figures_dir)

# %% [markdown]
# ## What a few atoms respond to
#
# Each row is one atom: the auxiliary images on which it is most active, cropped around its
# strongest patch, with its activation overlaid (each row has its own colour scale). The first
# rows are the most frequently firing atoms (typically backgrounds and textures); the last rows are
# the atoms that fire most selectively on defect patches (their firing rate on patches with at
# least 25% defect pixels relative to normal patches).

# %%
chosen = analysis.choose_atoms(sae_pass.atoms, n_atoms_shown)
scores = analysis.atom_image_scores(sae.sae, aux_tokens, chosen["atom"])
top = analysis.top_images(aux_tokens, scores, chosen["atom"], n=4)
images, acts, names = analysis.activation_panels(
    sae.sae, aux_tokens, top, size=224, crop=112, atoms=chosen["atom"])
labels = [f"{g}\natom {a}" for g, a in zip(chosen["group"], chosen["atom"])]
fig = viz.activation_gallery(images, acts, labels, names,
                             "Top-activating auxiliary images (crops)")
nb.show_figure(fig, top.merge(chosen, on="atom"), "02_sae_atoms", figures_dir)
