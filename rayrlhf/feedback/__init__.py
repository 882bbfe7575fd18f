"""Feedback from AI: a judge that labels preference pairs from a constitution (RLAIF)."""
