"""Read-only analyses behind the notebooks' figures.

Each function reads cached artifacts (a :class:`~spg.features.TokenStore`, a trained SAE, an
:class:`~spg.guides.SPGHead`, an :class:`~spg.pipeline.Evaluation`) and returns numpy arrays or tidy
:class:`pandas.DataFrame` s that :mod:`spg.viz` draws and :func:`spg.viz.save_figure` stores. Nothing
here trains or writes to the cache. The functions live in three modules and are all importable from
here: :mod:`.data` (images, masks, examples, tables), :mod:`.atoms` (SAE statistics and atoms) and
:mod:`.results` (guides and evaluation).
"""

from .data import (  # noqa: F401
    load_images, load_masks, patches_in_order, pick_examples, panels, titles, store_summary,
    backbone_table, token_norms, pca_rgb, counts, integer_bins, log_frequency, stats_table
)
from .atoms import (  # noqa: F401
    atom_activations, SAEPass, sae_pass, choose_atoms, atom_image_scores, top_images,
    top_per_category, activation_panels, defect_firing, lift_matrix, defect_mass, category_firing, generality, generality_long, firing_matrix
)
from .results import (  # noqa: F401
    sparsity_table, mass_table, top_coefficients, mass_at, guide_cosines, maps_for, percent,
    long_metrics, curve_table, ranked_examples, SHORT_NAMES
)
