"""The model side: PCEN frontend, building blocks, timm backbones, and the recipe -> network builder."""
