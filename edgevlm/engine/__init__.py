"""The engine core: an image+text model in stages (prepare -> encode -> Generator), and everything it needs to
read a model folder, preprocess images, build prompts, tokenize and decode. It knows no video files, cameras or
output files; edgevlm.media builds those on its public API. Its modules import nothing from edgevlm.media."""
