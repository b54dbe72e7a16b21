"""Graders: score a model's sample against its dataset item, in OpenAI's grader schema.

    schema.py         the grader objects (string_check, text_similarity, python, score_model, multi)
    templates.py      {{ item.* }} / {{ sample.* }} substitution
    formula.py        a multi grader's calculate_output, evaluated without eval
    text_metrics.py   fuzzy_match, bleu, gleu, rouge_*
    sandbox.py        the only way user code (python graders) runs: a locked-in child process
    grading.py        grade one sample (or many); failures score 0 and are flagged

Like ``training/``, this package never imports api/, store/ or queue/.
"""
