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
# # 4. Zero-shot evaluation on the target categories
#
# The guides trained on the auxiliary categories are applied unchanged to the target categories,
# which played no part in training, model selection or normalisation. Each target image gets an
# anomaly map (`S_a`, upsampled and blurred) and an image score (by default the maximum of the
# map). Metrics are computed per category and then averaged over categories:
#
# * image level, from one score per image: AUROC, average precision (AP), max-F1;
# * pixel level, over all pixels of the category: AUROC, AP, and AUPRO (the per-region overlap
#   integrated up to a false-positive rate of 0.3).

# %% tags=["parameters"]
preset = "default"
backbone = "efficientnet_lite2"
weights = None
aux = "synthetic"
target = "synthetic"
cache_dir = None
figures_dir = "figures"
overrides = None
image_score = None
blur_sigma = None
aupro_thresholds = None
lse_temperature = None
n_examples = 2

# %%
from spg import notebook as nb
from spg import analysis, viz
from spg.pipeline import (evaluate, extract, train_guides_stage,
                          train_sae_stage)

stage = dict(image_score=image_score, blur_sigma=blur_sigma,
             aupro_thresholds=aupro_thresholds,
             lse_temperature=lse_temperature)
cfg = nb.make_config(preset, backbone, weights, aux, target, cache_dir,
                     overrides, eval=stage)
nb.settings(cfg, "eval")

# %% [markdown]
# ## Running the evaluation
#
# Upstream artifacts (tokens, SAE, guides) come from the cache and are computed now if missing.

# %%
aux_tokens = extract(cfg, "aux")
target_tokens = extract(cfg, "target")
sae = train_sae_stage(aux_tokens, cfg.sae, cfg.cache_dir)
guides = train_guides_stage(aux_tokens, sae, cfg.guides, cfg.cache_dir)
evaluation = evaluate(target_tokens, guides, cfg.eval, cfg.cache_dir)

# %% [markdown]
# ## Metrics per target category
#
# In percent (`I-` image level, `P-` pixel level); the `mean` row averages over categories (a
# metric that is undefined for a category would be left out of the mean, never counted as zero).
# The image-level metrics use the image score named in the settings above.

# %%
nb.markdown(nb.aupro_note(cfg))
nb.show_table(analysis.percent(evaluation.metrics), "04_metrics", figures_dir)

# %%
long = analysis.long_metrics(evaluation.metrics)
fig = viz.bars(long, "metric", "value", hue="category", ylim=(0, 1),
               title="Zero-shot metrics per target category")
nb.show_figure(fig, long, "04_metrics_bars", figures_dir)

# %% [markdown]
# The same metrics for each defect type, against the normal images of its category.

# %%
per_defect = analysis.percent(evaluation.per_defect)
nb.show_table(per_defect, "04_metrics_per_defect", figures_dir)

# %% [markdown]
# ## Curves
#
# Image-level ROC and precision-recall curves (one point per image score), pixel-level ROC, and
# the exact PRO curve up to FPR 0.3, whose normalised area is the AUPRO of the table.

# %%
curves = analysis.curve_table(target_tokens, evaluation, cfg.eval.image_score)
nb.show_figure(viz.metric_curves(curves), curves, "04_curves", figures_dir)

# %%
fig = viz.score_strips(evaluation.scores, cfg.eval.image_score)
nb.show_figure(fig, evaluation.scores, "04_scores", figures_dir)

# %% [markdown]
# ## Hits and misses
#
# Ranked over all target images by image score: the highest-scored anomalous images (hits), the
# lowest-scored anomalous images (misses) and the highest-scored normal images (false alarms). Each
# row shows the image with its ground truth outlined, the mask, and the anomaly map (ground truth
# outlined again); all maps share one colour scale.

# %%
score = cfg.eval.image_score
ranked = analysis.ranked_examples(evaluation.scores, score, n_examples)
images, masks, titles = analysis.panels(target_tokens, ranked, score=score)
maps = evaluation.maps()[ranked["index"].to_numpy()]
fig = viz.map_rows(images, masks, maps, titles, groups=ranked["group"],
                   suptitle="Target images: hits, misses and false alarms")
nb.show_figure(fig, ranked, "04_examples", figures_dir)
