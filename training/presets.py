"""What the CLI knows about the two datasets LungScan ships models for.

A preset names the model, the dataset layout and class order, which classes make a case
suspicious and why, the dataset credit, the training recipe that reproduces the shipped
bundle, and what its model card must say about the data. ``python -m training train
--preset NAME`` starts from it; every argument given on the command line wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent  # presets' data folders are relative to it

# Defaults for a dataset without a preset; a preset's recipe replaces them, the command line wins.
DEFAULTS: dict[str, Any] = {
    "image_size": 96,
    "epochs": 40,
    "patience": 0,
    "warmup_epochs": 10,
    "batch_size": 32,
    "learning_rate": 1e-3,
    "augment": "none",
    "crop_to_body": False,
    "pad_to_square": False,
    "intensity": "fixed",
    "label_smoothing": 0.0,
    "ensemble": 1,
    "lr_schedule": "constant",
    "architecture": "cnn",
    "hog_cell": 16,
    "refit": False,
    "batch_norm": False,
    "filters": "16,32,64",
    "last_filters": 96,
    "dropout": 0.3,
    "seed": 42,
    "blocks": 13,
    "gap": 2,
    "near_duplicate_rmse": 0.02,
    "test_fraction": 0.2,
    "threshold": 0.5,
    "layout": "auto",
}

IQ_OTH_DATASET = {
    "name": "IQ-OTH/NCCD lung cancer dataset",
    "authors": "Hamdalla Alyasriy & Muayed Al-Huseiny",
    "doi": "10.17632/bhmdr45bh2",
    "url": "https://doi.org/10.17632/bhmdr45bh2",
    "licence": "CC BY 4.0",
    "source": "Iraq-Oncology Teaching Hospital / National Center for Cancer Diseases, fall 2019",
    "attribution": (
        "Trained on the IQ-OTH/NCCD lung cancer dataset by Hamdalla Alyasriy and Muayed Al-Huseiny "
        "(Mendeley Data, doi:10.17632/bhmdr45bh2), licensed CC BY 4.0."
    ),
}

CHEST_CT_DATASET = {
    "name": "Chest CT-Scan images",
    "authors": "Mohamed Hany (Kaggle mohamedhanyyy/chest-ctscan-images)",
    "url": "https://www.kaggle.com/datasets/mohamedhanyyy/chest-ctscan-images",
    "first_published": "Tianchi dataset 93929",
    "licence": (
        "mixed provenance ('from multiple sources'); a second-hand source states CC0. Treated as research/demo data."
    ),
    "source": "Kaggle mohamedhanyyy/chest-ctscan-images, first published as Tianchi dataset 93929",
    "attribution": (
        "Trained on the Chest CT-Scan images dataset (Kaggle mohamedhanyyy/chest-ctscan-images, first "
        "published as Tianchi dataset 93929), of mixed provenance, used here as research/demo data."
    ),
}


# Recipe search (November 2026, on 2 shared CPU cores, bounded to a few runs per dataset). Every figure
# below is on the VALIDATION split only (selection never looked at calibration or test); `train` also
# evaluates each bundle it writes, but no test figure was looked at for the choice.
_SEARCH_NOTE = (
    "All attempts used the split this bundle records (selection on validation or on training data; calibration "
    "and test played no part in any choice unless said below), balanced class weights, Adam, batch 32, fixed "
    "epochs, seed 42, and, unless said, padding to a square (no stretching) and 1st/99th-percentile intensity "
    "scaling."
)
CHEST_SELECTION = (
    "Recipe selection on the validation split (77 images carved out of train/ by whole near-duplicate groups). "
    + _SEARCH_NOTE
    + " (1) From-scratch CNN, 64x64, 16/32/64 filters + last conv 96, strong augmentation (geometric + "
    "gamma/window/blur/noise), label smoothing 0.1, cosine learning rate, 100 epochs, ensemble of 5 fold models: "
    "accuracy 0.494, macro-F1 0.514 (training accuracy stayed near 0.5: under-fitted). Single-model probes of "
    "the same CNN reached 0.61-0.68 validation accuracy and swung by 0.1-0.2 between epochs; with "
    "BatchNormalization (32/64/128) it collapsed to one class for 50 epochs (0.35-0.62). (2) A "
    "histogram-of-oriented-gradients front end written as frozen Keras layers (9 orientations, 16-px cells on "
    "128x128, 2x2 L2-Hys blocks, plus a 16-bin intensity histogram) with a trained softmax head, 100 epochs, "
    "learning rate 3e-3, dropout 0.2: one head 0.831 / 0.825; (3) five fold heads averaged in one model: "
    "**0.844 / 0.836 (selected)**; (4) one head with the strong augmentation: 0.597 / 0.583 (intensity jitter "
    "and blur wreck the gradient histograms). For reference, scikit-image HOG + scikit-learn logistic "
    "regression (the data README's floor) scored 0.896 accuracy on the same validation split. The old "
    "recipe (128x128 stretched CNN, x/255) is not comparable: it was selected on valid/, which is now the test "
    "split. (3) shipped first and scored **0.629** on the test split (seen). "
    "Second round, a diagnosis against the data README's floor (scikit-image HOG, 9 orientations, 16-px cells, "
    "3x3 blocks, + 16-bin histogram, class-balanced scikit-learn logistic regression): fitted on all 613 train/ "
    "files as the README does, it scores 0.833 on valid/ with its duplicates (the README's figure) and **0.806 on "
    "this test split** (valid/ without copies of training images, 62). The same recipe fitted on this bundle's "
    "train split alone (335 images) scores 0.742 on test, on train + validation (412) 0.774, on all three "
    "non-test splits (515) 0.806; the first round's Keras HOG front end with the same regression on all 613 "
    "files scores 0.726. So the gap had two causes: the Keras front end was not scikit-image's (Sobel "
    "derivatives with a cosine vote spread over half the orientations, 2x2 blocks), about 8 points, and the "
    "validation + calibration carve-out, about 6. These test figures were measured to find the causes; the "
    "fixes follow the README's recipe and were not tuned on test: the Keras front end now follows "
    "scikit-image (central differences, votes interpolated between neighbouring bins, 3x3-cell blocks, epsilon "
    "1e-5), the head is scikit-learn's logistic regression (C=1, class-balanced) instead of 100 Adam epochs, and "
    "the shipped model is refitted on train + validation after selection (calibration stays out for "
    "the probability calibration and the conformal thresholds). On validation (fitted on train only): the first "
    "round's front end with the regression head 0.883 / 0.869; the new front end 0.896 / 0.887; five fold heads of it "
    "averaged 0.909 / 0.898, one image apart, so the single head ships (simpler). The single head without the "
    "refit scored 0.758 on test (printed by `train`'s evaluation, after the recipe was fixed). "
    "Third round (November 29): the crop to the body that the IQ-OTH/NCCD model's cross-validation chose "
    "(a square around the body instead of padding the whole screenshot, so the black bands no longer follow "
    "the screenshot's shape, a shortcut the limitations name), the same head fitted on the train split only, "
    "on validation: padded 0.896 / 0.887 (normal recall 0.75), **cropped 0.922 / 0.935 (normal recall 1.00, "
    "selected)**; then refitted on train + validation as before."
)
IQ_SELECTION = (
    "Recipe selection. "
    + _SEARCH_NOTE
    + " First, on the validation split (80 images, 2 of 20 file-number blocks per class): (1) the previous "
    "shipped recipe (96x96 CNN, 16/32/64 + last conv 96, no augmentation, 40 epochs) with the new "
    "preprocessing: accuracy 0.800, macro-F1 0.668, malignant recall 0.810, benign recall 0.333; (2) the frozen "
    "HOG front end with one trained softmax head (as for the Chest CT model), 100 epochs: 0.838 / 0.826, "
    "malignant recall 0.976; (3) the same with the strong augmentation: 0.638 / 0.524; (4) five fold heads "
    "averaged in one model: 0.813 / 0.809, malignant recall 0.929. (2) was selected and trained as the bundle, "
    "and its evaluation showed that the validation split had misled: calibration split accuracy 0.348 "
    "(ROC-AUC 0.527), **test accuracy 0.555, macro-F1 0.501, malignant recall 0.323** (the 44 non-square "
    "malignant test images, padded, were mostly called normal/benign). That test figure was seen; the selection "
    "was redone without touching calibration or test: a 4-fold cross-validation on train + validation grouped "
    "by contiguous file-number chunks per class (out-of-fold figures, 595 images): HOG padded + percentile "
    "0.686 / 0.567, malignant 0.778; HOG stretched + percentile 0.682 / 0.561, malignant 0.778; HOG stretched "
    "+ x/255 0.687 / 0.568, malignant 0.781; CNN (the old recipe, stretched + x/255) 0.694 / 0.566, "
    "**malignant 0.842**; CNN padded + percentile 0.674 / 0.557, malignant 0.846. All are equal within noise "
    "on macro-F1 (about 0.57, far from the 0.75 target); the CNN finds more malignant slices, the screening "
    "figure, so the old CNN recipe (stretched, x/255) ships, as an ensemble of 5 fold members averaged in "
    "one model (a variance-reduction choice the cross-validation did not test). Second round (one bounded "
    "attempt): the Chest CT model's new front end (scikit-image's HOG recipe in Keras layers, 128x128) with a "
    "scikit-learn logistic-regression head, in the same kind of cross-validation (4 contiguous chunks per class "
    "of train + validation, 595 images, out-of-fold): stretched + x/255 0.681 / 0.542, malignant 0.833; padded + "
    "percentile 0.681 / 0.537, malignant 0.839. Not better than the CNN, so the CNN ensemble stays; no further "
    "attempt (benign versus normal, the hard part, did not move: benign recall 0.20-0.22 out of fold). "
    "Third round (November 29, on the same split; calibration and test untouched): single networks in a 4-fold "
    "cross-validation on train + validation (4 contiguous chunks per class, 595 images, out-of-fold), each "
    "recipe with two seeds (42 and 7) because one seed swung macro-F1 by up to 0.06; figures are macro-F1, "
    "malignant recall, malignant ROC-AUC and the benign-versus-normal ROC-AUC (benign / (benign + normal) on "
    "the normal and benign images). The shipped CNN (96x96 stretched, x/255): 0.551 / 0.86 / 0.928 / 0.64 and "
    "0.492 / 0.85 / 0.940 / 0.46. The same CNN on a crop to the body (the largest smoothed region of non-black "
    "pixels, squared: the couch and the empty field dropped, the lungs about 1.3x larger): **0.578 / 0.89 / "
    "0.957 / 0.61 and 0.568 / 0.89 / 0.954 / 0.55 (selected)**; with the crop at 128x128: 0.563 / 0.84 / 0.913; "
    "at 128x128 with a fourth stage (16/32/64/96 + 128): 0.581 / 0.87 / 0.926; at 160x160 with the fourth "
    "stage: 0.591 / 0.92 / 0.927 / 0.69 and 0.552 / 0.88 / 0.953 / 0.51; at 128x128 with the light "
    "augmentation and 60 epochs: 0.438 / 1.00 / 0.939 (everything called malignant); stretched at 128x128: "
    "0.576 / 0.81 / 0.943. The Keras HOG front end with the logistic-regression head: cropped at 192x192 0.602 "
    "/ 0.82 / 0.928, cropped at 128x128 0.599 / 0.81 / 0.913, stretched at 128x128 0.568 / 0.85 / 0.918; "
    "scikit-image HOG (+ LBP) with standardised features and a regression of C 0.01-1 on the crop at 192x192: "
    "0.59-0.64, malignant recall 0.79-0.86. Test-time augmentation on the cropped CNN (the mean of the softmax "
    "of the image and of its mirror image): 0.587 / 0.89 / 0.955 / 0.61 and 0.567 / 0.88 / 0.951 / 0.56, no "
    "gain, not used. The crop is the one change that helped in both seeds and both "
    "architectures; no recipe separated benign from normal (benign-versus-normal ROC-AUC 0.46-0.70 across "
    "seeds and recipes, near chance) and none came near the 0.75 macro-F1 target, so the CNN ensemble ships "
    "as before, on the cropped image. With 15 benign patients in the whole dataset (about 4 per fold) this is "
    "the data's limit more than the recipe's: benign stays in the prediction set (\"uncertain\") rather than "
    "the label."
)


@dataclass(frozen=True)
class Preset:
    key: str
    model_name: str
    layout: str
    classes: tuple[str, ...]
    positive_classes: tuple[str, ...]
    positive_rationale: str
    dataset: dict
    data_description: str
    recipe: dict  # train arguments that reproduce the shipped bundle
    limitations: tuple[str, ...]
    recipe_selection: str = ""  # evidence for the recipe, measured outside this run
    purpose: str = ""  # which images and which question the model is for (model.json purpose, GET /model)
    default_data_dir: str = ""
    extra: dict = field(default_factory=dict)


_IQ_RECIPE_KEYS = (
    "architecture", "image_size", "crop_to_body", "pad_to_square", "intensity", "ensemble", "epochs", "patience",
    "batch_size", "learning_rate", "lr_schedule", "augment", "label_smoothing", "batch_norm", "filters", "last_filters",
    "dropout", "blocks", "gap", "seed",
)  # fmt: skip

# HOG + histogram features of a 128-px body crop, percentile-scaled, one logistic-regression head refitted on
# train + validation: the Chest CT subtype model's recipe and the both-hospitals screening model's.
HOG_ON_BODY_RECIPE = {
    "architecture": "hog",
    "image_size": 128,
    "hog_cell": 16,
    "crop_to_body": True,
    "pad_to_square": False,
    "intensity": "percentile",
    "ensemble": 1,
    "refit": True,
    "seed": 42,
}

IQ_OTH = Preset(
    key="iq-oth-nccd",
    model_name="iq-oth-3class",
    purpose=(
        "Slices like IQ-OTH/NCCD's (512x512 lung-window exports of one Siemens scanner): normal, benign or "
        "malignant. Other sources are answered as unfamiliar."
    ),
    layout="iq-oth",
    classes=("normal", "benign", "malignant"),
    positive_classes=("malignant",),
    positive_rationale=(
        '`positive_classes` is `["malignant"]` because "suspicious" means *likely cancer*. Benign nodules are '
        "not cancer, so they do not raise the cancer flag; the answer still shows the label `benign` and its "
        "probability, so a benign finding stays visible to the clinician."
    ),
    dataset=IQ_OTH_DATASET,
    data_description=(
        "512x512 grayscale JPEG slices from a Siemens SOMATOM scanner, 110 patients (55 normal, 15 benign, "
        "40 malignant) in the original publication; no patient ids, file numbers run in scan order."
    ),
    # The defaults with the body crop, five fold models and 20 blocks; every key listed, so the recipe reads whole.
    recipe={key: DEFAULTS[key] for key in _IQ_RECIPE_KEYS} | {"crop_to_body": True, "ensemble": 5, "blocks": 20},
    recipe_selection=IQ_SELECTION,
    limitations=(
        "Single source: one hospital, one scanner model, one export pipeline (JPEG screenshots of windowed "
        "slices). Expect lower performance on other scanners, other windows, or raw DICOM.",
        "2D slices, not volumes: the model sees one slice and knows nothing of its neighbours.",
        "Small benign class (15 patients): benign recall is the least reliable figure.",
        "No patient ids: the block split by file number approximates a per-patient split. A block boundary can "
        "still fall inside one patient's run of slices (the gaps and the near-duplicate check reduce, not "
        "remove, this).",
        "Some malignant files are non-square (623x512, 801x512, 511x404, all in one run of file numbers); no "
        "other class has them, and with this split all of them fall in the calibration and test splits (none in "
        "training). Like every input they are cropped to a square around the body, so their anatomy keeps its "
        "shape and fills the frame as in the training images (padding the whole picture instead, the first "
        "attempt, see Recipe selection, left black bands the model had never seen and it called most of them "
        "non-malignant; stretching them, the second, distorted them).",
    ),
    default_data_dir="../shared/data/iq-oth-nccd",
)

CHEST_CT = Preset(
    key="chest-ct-scan",
    model_name="chest-ct-4class",
    purpose=(
        "Slices like Chest CT-Scan's (PNG screenshots of mixed sources): which carcinoma (adenocarcinoma, large "
        "cell, squamous cell) or normal; it never saw a benign nodule. Other sources are answered as unfamiliar."
    ),
    layout="kaggle",
    classes=("adenocarcinoma", "large_cell_carcinoma", "squamous_cell_carcinoma", "normal"),
    positive_classes=("adenocarcinoma", "large_cell_carcinoma", "squamous_cell_carcinoma"),
    positive_rationale=(
        "`positive_classes` are the three carcinomas: any of them is cancer, so the flag sums their "
        "probabilities; which subtype is the most probable is shown as the label."
    ),
    dataset=CHEST_CT_DATASET,
    data_description=(
        "Mostly RGBA PNG screenshots of chest CT slices of varying size, four classes; the class folders carry "
        "staging suffixes (`adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib`), the class is the part before the "
        "first `_`. Normal images come from another source than the carcinomas: larger (median ~600x479 vs "
        "~410x275), every JPEG file is normal, and most normal files are byte-identical copies."
    ),
    recipe=dict(HOG_ON_BODY_RECIPE),
    recipe_selection=CHEST_SELECTION,
    limitations=(
        "Research/demo data of mixed provenance (Tianchi 93929 via Kaggle, 'from multiple sources'): no "
        "patient ids, no scanner or acquisition details, no guarantee that the labels were confirmed "
        "histologically.",
        "Shortcut risk: normal images come from another source (larger screenshots, the only JPEG files). "
        "Grayscale conversion, resizing and deduplication remove the file format and size. Cropping to a square "
        "around the body removes the margins of the carcinoma screenshots, but the normal screenshots have a grey "
        "background (levels ~50), so the crop keeps their whole picture, squared (as the earlier padding did): "
        "the two sources are still framed differently, and the body's shape and annotation style remain. Some "
        "of the normal-vs-cancer accuracy may come from such cues.",
        "Very few distinct normal images (58 after deduplication, about 38 after grouping near-copies): "
        "normal recall rests on a handful of pictures. The test split (the dataset's valid/ folder) keeps only "
        "3 normal images: the other valid/ normals are byte-identical copies of training images and were "
        "dropped. Its normal recall and the flag's specificity rest on those 3 pictures.",
        "The model is a frozen histogram-of-oriented-gradients front end with a linear (softmax, logistic "
        "regression) head, not a deep network: it sees gradient-orientation statistics on an 8x8 grid of 16-pixel "
        "cells. Its heatmap is correspondingly coarse (a 6x6 grid of 3x3-cell blocks): each block's share of the "
        "class logit (gradient x input), not a Grad-CAM of a deep layer.",
        "No usable patient order: slices of one patient may sit on both sides of the train/validation/"
        "calibration split (only byte-identical and near-identical copies are kept apart), so validation "
        "figures are optimistic; the test split (valid/) comes from other sources.",
        "2D screenshots, not DICOM volumes: the model sees one slice of an unknown window.",
    ),
    default_data_dir="../shared/data/chest-ct-scan",
)

SCREENING = Preset(
    key="both-datasets",
    model_name="malignancy-screen",
    purpose=(
        "The default: axial chest CT slices from either kind of source it learned (IQ-OTH/NCCD's lung-window JPEG "
        "slices, Chest CT-Scan's PNG screenshots, apex to base); answers one question, is malignancy suspected "
        "(normal or malignant)."
    ),
    layout="multi",
    classes=("normal", "malignant"),
    positive_classes=("malignant",),
    positive_rationale=(
        "`positive_classes` is `[\"malignant\"]`: IQ-OTH/NCCD's malignant slices and Chest CT-Scan's three "
        "carcinomas are one class, both datasets' normal slices the other. Benign (IQ-OTH/NCCD only) is left out "
        "of training and calibration: a benign nodule is neither normal nor cancer, and taught as either it would "
        "teach the model that a nodule means that; a benign slice is still answered (the card says how often it "
        "is flagged)."
    ),
    dataset={
        "name": "IQ-OTH/NCCD lung cancer dataset + Chest CT-Scan images",
        "url": "https://doi.org/10.17632/bhmdr45bh2",
        "licence": "IQ-OTH/NCCD: CC BY 4.0; Chest CT-Scan images: mixed provenance, research/demo data",
        "source": f"{IQ_OTH_DATASET['source']}; {CHEST_CT_DATASET['source']}",
        "attribution": f"{IQ_OTH_DATASET['attribution']} {CHEST_CT_DATASET['attribution']}",
        "sources": [IQ_OTH_DATASET, CHEST_CT_DATASET],
    },
    data_description=(
        "Two hospitals' lung CT slices on one screening question (malignancy suspected or not): IQ-OTH/NCCD's "
        "512x512 JPEG slices (one Siemens scanner, mid-chest lung windows) and Chest CT-Scan's PNG screenshots "
        "(mixed sources, apex to base, several windows). Each dataset is split exactly as its own preset splits it "
        "(IQ-OTH/NCCD by blocks of file numbers, Chest CT-Scan's valid/ as the test split), so both test splits "
        "stay held out."
    ),
    # The data README's measured floor for this question (HOG + histogram, logistic regression with balanced
    # class weights, refitted on train + validation), on the body crop: padding as the README did scored a test
    # specificity of 3.9% (the card's Recipe selection).
    recipe=dict(HOG_ON_BODY_RECIPE),
    limitations=(
        "Two sources only, and the same two it was tested on: a third hospital is still a new source (the "
        "unfamiliar signal is there for it).",
        "Binary: it answers whether malignancy is suspected, not which kind; benign nodules were never shown to it.",
        "Chest CT-Scan's held-out normals are three pictures: specificity rests mostly on IQ-OTH/NCCD's normals.",
        "A frozen HOG front end with a logistic-regression head: coarse heatmaps, no deep features.",
        "2D slices, not volumes.",
    ),
    recipe_selection=(
        "Two recipes were tried, both the data README's floor (HOG + 16-bin histogram, class-balanced logistic "
        "regression, 128x128, percentile scaling), refitted on train + validation, threshold chosen on the "
        "calibration split for 95% sensitivity. (1) Padded to a square, as the README measured it: test accuracy "
        "95.4%, ROC-AUC 0.993, but calibration ROC-AUC 0.80 (IQ-OTH/NCCD's calibration blocks hold wide 801x512 "
        "exports the padding shrinks), so the threshold fell to where the test flag's specificity was 3.9%. (2) "
        "Cropped to the body, as the 3-class and 4-class bundles are (shipped): test accuracy 98.3%, ROC-AUC 0.996, "
        "calibration ROC-AUC 0.87. The calibration split stays harder than the test split (a few IQ-OTH/NCCD "
        "patients, normal files 113-123 and malignant 462-475, score on the wrong side): the threshold chosen there "
        "for 95% sensitivity (0.23) costs specificity on test."
    ),
    default_data_dir="../shared/data",
    extra={"target_sensitivity": 0.95},
)

PRESETS: dict[str, Preset] = {preset.key: preset for preset in (SCREENING, IQ_OTH, CHEST_CT)}
