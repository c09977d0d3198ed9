"""Assembly: builds models from what the readers return (config, weights, tokenizer); sits above the models."""
