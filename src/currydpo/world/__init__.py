"""The embedded offline world: a synthetic language with a known gold reward, its tokenizer and SFT model."""
