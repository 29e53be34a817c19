"""The LaTeX and Markdown documents: complete, compiled by pdflatex where it is installed."""

from __future__ import annotations

import shutil

import pytest
from gradsmith.codegen.cli import main
from gradsmith.derive.latex import document, escape_text


@pytest.fixture(scope="module")
def latex() -> str:
    return document("latex")


def test_document_covers_definitions_to_options(latex):
    for heading in ("Definitions", "The gradient with respect to the logits", "Case i = t",
                    "Case i != t", "Vector form", "The softmax Jacobian", "Mini-batch",
                    "Shift invariance", "The online normalizer", "exp through exp2",
                    "Label smoothing with class weights", "z-loss", "Logit softcapping",
                    "ignored row"):
        assert escape_text(heading) in latex, heading
    assert latex.startswith(r"\documentclass") and latex.rstrip().endswith(r"\end{document}")
    assert latex.count(r"\begin{align*}") == latex.count(r"\end{align*}") > 30
    assert "checked symbolic" in latex and "checked numeric" in latex
    assert "targets sum to one" in latex


def test_markdown_uses_display_math():
    markdown = document("md")
    assert markdown.startswith("# ")
    assert markdown.count("$$") % 2 == 0 and markdown.count("$$") > 100
    assert r"\begin{align" not in markdown


def test_unknown_format_is_rejected():
    with pytest.raises(ValueError, match="format"):
        document("html")


def test_cli_writes_markdown_to_a_file(tmp_path, capsys):
    target = tmp_path / "derivation.md"
    assert main(["latex", "--format", "md", "--out", str(target)]) == 0
    assert target.read_text().startswith("# ")
    assert capsys.readouterr().out == ""
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_cli_pdf_without_pdflatex_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["latex", "--pdf", str(tmp_path / "out.pdf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pdflatex not found" in err


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_latex_compiles_with_pdflatex(tmp_path):
    target = tmp_path / "out.pdf"
    assert main(["latex", "--pdf", str(target)]) == 0
    assert target.read_bytes().startswith(b"%PDF")


def test_cli_out_into_missing_folder_is_one_line(tmp_path, capsys):
    assert main(["latex", "--out", str(tmp_path / "nope" / "x.tex")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
