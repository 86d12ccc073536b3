"""The tiny world: a procedurally generated multimodal world for training MMaDA on a laptop CPU.

Three tasks share one small universe, each with honest rule-based judges:

- shapes scenes (`scenes`, `captions`, `vqa`): 32x32 images of 1-4 coloured shapes, GenEval-style
  captions with structured specs, and VQA with short and chain-of-thought answers;
- real handwritten digits (`digits`): scikit-learn's 8x8 digits rendered at 32x32, with a fixed
  held-out split;
- arithmetic word problems (`arithmetic`): 1-4 steps with worked `<think>...</think>` solutions.

`data` yields records with disjoint train/validation splits and the fixed `evaluation_suite`;
`judges` scores model outputs (shared by evaluation and RL rewards); `preview` draws sample grids.
"""

from mmada.world.arithmetic import ArithmeticProblem, sample_problem
from mmada.world.captions import (
    CATEGORIES,
    ObjectSpec,
    Prompt,
    T2IVerdict,
    evaluate_prompt,
    parse_caption,
    sample_prompt,
    scene_for_prompt,
)
from mmada.world.cot import format_cot
from mmada.world.data import (
    DigitExample,
    EvaluationSuite,
    T2IExample,
    TextExample,
    VQAExample,
    digit_examples,
    evaluation_suite,
    iter_digits,
    iter_t2i,
    iter_text,
    iter_vqa,
    split_of,
)
from mmada.world.digits import DigitClassifier, load_digit_classifier, render_digit
from mmada.world.judges import (
    classify_digit,
    extract_number,
    normalize_answer,
    score_arithmetic,
    score_digit,
    score_format,
    score_t2i,
    t2i_reward,
    vqa_exact_match,
)
from mmada.world.parser import ParsedObject, parse_scene
from mmada.world.preview import describe, sample_grid
from mmada.world.scenes import COLORS, PALETTE, RELATIONS, SHAPES, Scene, SceneObject, render_scene, sample_scene
from mmada.world.vqa import QTYPES, VQAItem, make_question, sample_vqa

__all__ = [
    "CATEGORIES",
    "COLORS",
    "PALETTE",
    "QTYPES",
    "RELATIONS",
    "SHAPES",
    "ArithmeticProblem",
    "DigitClassifier",
    "DigitExample",
    "EvaluationSuite",
    "ObjectSpec",
    "ParsedObject",
    "Prompt",
    "Scene",
    "SceneObject",
    "T2IExample",
    "T2IVerdict",
    "TextExample",
    "VQAExample",
    "VQAItem",
    "classify_digit",
    "describe",
    "digit_examples",
    "evaluate_prompt",
    "evaluation_suite",
    "extract_number",
    "format_cot",
    "iter_digits",
    "iter_t2i",
    "iter_text",
    "iter_vqa",
    "load_digit_classifier",
    "make_question",
    "normalize_answer",
    "parse_caption",
    "parse_scene",
    "render_digit",
    "render_scene",
    "sample_grid",
    "sample_problem",
    "sample_prompt",
    "sample_scene",
    "sample_vqa",
    "scene_for_prompt",
    "score_arithmetic",
    "score_digit",
    "score_format",
    "score_t2i",
    "split_of",
    "t2i_reward",
    "vqa_exact_match",
]
