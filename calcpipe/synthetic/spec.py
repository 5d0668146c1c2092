"""Study specifications: everything random about a synthetic study, drawn from one seed.

A :class:`StudySpec` is cheap (no pixels) so cohort statistics can be checked on
thousands of them. Defaults follow the paper's Table 1 (Singh et al. 2021): age
64.2 +/- 9.8, 33 % female; CAC categories 0 / 1-99 / 100-399 / >= 400 in 11 / 11 / 24 /
53 % (the published shares, renormalised to sum to 1); LAD 75 %, RCA 56 %, LCX 57 %, triple
vessel 46 %; aortic calcium 85 %.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from calcpipe.scoring.features import PAPER_CATEGORIES

CAC_CATEGORIES = PAPER_CATEGORIES
#: Agatston range drawn (log-uniformly) for each category
CATEGORY_RANGES = {"0": (0.0, 0.0), "1-99": (1.0, 99.0), "100-399": (100.0, 399.0),
                   ">=400": (400.0, 2500.0)}


@dataclass(frozen=True)
class Prevalence:
    """Cohort composition. ``vessel_patterns`` gives, among patients with CAC > 0, the
    probability of each set of calcified major vessels; the default solves the Table 1
    marginals (LAD 75 %, RCA 56 %, LCX 57 %, all three 46 %, of all patients)."""

    age_mean: float = 64.2
    age_sd: float = 9.8
    female: float = 0.33
    cac_categories: tuple[float, float, float, float] = (0.11, 0.11, 0.24, 0.53)
    vessel_patterns: tuple[tuple[tuple[str, ...], float], ...] = (
        (("LAD", "RCA", "LCX"), 0.517),
        (("LAD",), 0.256), (("RCA",), 0.074), (("LCX",), 0.075),
        (("LAD", "RCA"), 0.030), (("LAD", "LCX"), 0.040), (("RCA", "LCX"), 0.008),
    )
    left_main: float = 0.25  # among patients with CAC > 0
    aortic: float = 0.85
    mitral: float = 0.10


@dataclass(frozen=True)
class Scanner:
    """Acquisition and reconstruction parameters of one study."""

    matrix: int
    pixel_mm: float
    slice_spacing_mm: float
    slice_thickness_mm: float
    kvp: float
    kernel: str
    noise_sd_hu: float
    psf_sigma_mm: float
    manufacturer: str
    model: str
    exposure_mas: float
    cardiac_phase_percent: float


@dataclass(frozen=True)
class Randomisation:
    """Domain randomisation for training: widen every range so a model learns anatomy,
    not one simulator's texture. Zero means the calibrated defaults."""

    tissue_hu_jitter: float = 0.0  # SD (HU) added to each tissue's mean
    noise_factor: tuple[float, float] = (1.0, 1.0)
    blur_factor: tuple[float, float] = (1.0, 1.0)
    anatomy_scale: tuple[float, float] = (1.0, 1.0)
    streak_probability: float = 0.0
    motion_probability: float = 0.0

    @classmethod
    def training(cls) -> Randomisation:
        return cls(tissue_hu_jitter=12.0, noise_factor=(0.5, 1.8), blur_factor=(0.6, 1.6),
                   anatomy_scale=(0.85, 1.15), streak_probability=0.3, motion_probability=0.3)


@dataclass(frozen=True)
class StudySpec:
    """One synthetic study: patient, calcium plan and scanner (no pixels)."""

    index: int
    seed: int
    age_years: int
    sex: str
    cac_category: str
    cac_target: float
    vessels: tuple[str, ...]  # calcified coronary vessels (LM included when present)
    aortic: bool
    mitral: bool
    scanner: Scanner
    randomisation: Randomisation = field(default_factory=Randomisation)


def study_seed(cohort_seed: int, index: int) -> int:
    """Independent, reproducible seed of study ``index`` in a cohort."""
    return int(np.random.SeedSequence([cohort_seed, index]).generate_state(1)[0])


def sample_spec(cohort_seed: int, index: int, *, prevalence: Prevalence | None = None,
                matrix: int = 512, randomisation: Randomisation | None = None) -> StudySpec:
    """Draw study ``index`` of a cohort. The same arguments always give the same spec."""
    prev = prevalence or Prevalence()
    seed = study_seed(cohort_seed, index)
    rng = np.random.default_rng(seed)
    age = int(np.clip(round(rng.normal(prev.age_mean, prev.age_sd)), 30, 95))
    sex = "F" if rng.random() < prev.female else "M"
    shares = np.asarray(prev.cac_categories, dtype=np.float64)
    category = CAC_CATEGORIES[int(rng.choice(4, p=shares / shares.sum()))]
    low, high = CATEGORY_RANGES[category]
    target = 0.0 if high == 0 else float(np.exp(rng.uniform(np.log(low), np.log(high))))
    vessels: tuple[str, ...] = ()
    if target > 0:
        patterns, weights = zip(*prev.vessel_patterns, strict=True)
        w = np.asarray(weights)
        vessels = patterns[int(rng.choice(len(patterns), p=w / w.sum()))]
        if rng.random() < prev.left_main:
            vessels = ("LM", *vessels)
    aortic = bool(rng.random() < prev.aortic)
    mitral = bool(rng.random() < prev.mitral)
    fov = rng.uniform(200, 360) if matrix >= 384 else rng.uniform(300, 400)
    kvp = 100.0 if rng.random() < 0.25 else 120.0
    thickness = float(rng.choice([2.5, 3.0]))
    vendor = int(rng.integers(4))
    manufacturer, model, kernel = (
        ("SIEMENS", "SOMATOM Force", "Qr36"), ("GE MEDICAL SYSTEMS", "Revolution CT", "STANDARD"),
        ("Philips", "iCT 256", "B"), ("TOSHIBA", "Aquilion ONE", "FC12"))[vendor]
    scanner = Scanner(
        matrix=matrix, pixel_mm=round(fov / matrix, 4), slice_spacing_mm=thickness,
        slice_thickness_mm=thickness, kvp=kvp, kernel=kernel,
        noise_sd_hu=float(rng.uniform(12, 30)), psf_sigma_mm=float(rng.uniform(0.5, 0.7)),
        manufacturer=manufacturer, model=model, exposure_mas=float(rng.uniform(40, 120)),
        cardiac_phase_percent=float(rng.choice([70.0, 75.0])),
    )
    return StudySpec(index=index, seed=seed, age_years=age, sex=sex, cac_category=category,
                     cac_target=target, vessels=vessels, aortic=aortic, mitral=mitral,
                     scanner=scanner, randomisation=randomisation or Randomisation())
