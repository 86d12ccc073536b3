"""image_tokenizer."""
