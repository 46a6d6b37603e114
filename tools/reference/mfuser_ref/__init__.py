"""PyTorch oracle of MFuser-CLIP (CPU, float32). See model.MFuserCLIP."""
