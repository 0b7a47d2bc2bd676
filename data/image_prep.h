// image_prep.h: the vision towers' image preprocessing: one settings struct (ImagePrep) that a
// tower states, and one entry point (image_preprocess) the data loader and generate call.
// Bit-exact (float32 equality) with each family's own processor, at a single tile:
//
//   clip      LLaVA: Image.open(f).convert("RGB") [-> expand2square] -> CLIPImageProcessorPil:
//             shortest edge to S (BICUBIC), centre crop S x S, rescale 1/255, normalise
//   siglip    Image.open(f).convert("RGB") -> SiglipImageProcessorPil: resize to (S, S)
//             ignoring the aspect ratio with the config's filter (SigLIP: BICUBIC, SigLIP2's
//             fixed-resolution configs: BILINEAR), rescale, normalise (mean = std = 0.5)
//   internvl  InternVL / Vintern's chat code: Image.open(f).convert("RGB"),
//             T.Resize((S, S), BICUBIC) on the PIL image (Pillow's resize), T.ToTensor,
//             T.Normalize(ImageNet mean / std); the native transformers processor
//             (GotOcr2ImageProcessorPil) does the same on RGB, compositing alpha on white
//   idefics3  Idefics3ImageProcessorPil / SmolVLMImageProcessorPil on the opened image with
//             do_image_splitting false: convert_to_rgb (alpha composited on white), resize the
//             longest edge to size["longest_edge"] (the other side int(...) rounded up to even,
//             both capped at 4096), then to (S, S) = max_image_size["longest_edge"], LANCZOS
//             both times (uint8 in between, as PIL), rescale, normalise; one tile of S x S needs
//             no padding, so pixel_attention_mask is all ones
//   nanovlm   nanoVLM's single-image transform (data/processors.py before its image splitting):
//             image.convert("RGB"), T.Resize((S, S)) (BILINEAR on the PIL image), T.ToTensor,
//             no normalisation (mean 0, std 1: pixels in [0, 1]); no preprocessor_config.json
//
// The "Pil" classes are transformers 5's PIL backends (4.x: the classes without the suffix);
// the torchvision backends resample differently and are not what svlm reproduces.
// Rescale: transformers multiplies in float64 and casts to float32, torchvision's ToTensor
// divides by 255 in float32: for the 256 byte values the two give the same floats
// (scripts/make_image_fixtures.py asserts it), so one table serves both.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "data/image.h"

typedef enum {
    IMAGE_PREP_CLIP,
    IMAGE_PREP_SIGLIP,
    IMAGE_PREP_INTERNVL,
    IMAGE_PREP_IDEFICS3,
    IMAGE_PREP_NANOVLM,
    N_IMAGE_PREP
} ImagePrepFamily;

typedef enum {
    IMAGE_RESIZE_SHORTEST_CROP,   // CLIP: shortest edge to S, centre crop S x S
    IMAGE_RESIZE_SQUARE,          // SigLIP, InternVL: straight to S x S
    IMAGE_RESIZE_LONGEST_SQUARE,  // Idefics3: longest edge to longest_edge, then S x S
} ImageResizeRule;

typedef struct {
    ImagePrepFamily family;
    ImageResizeRule rule;
    ImageFilter filter;
    int size;              // S: the output is (3, S, S)
    int longest_edge;      // IMAGE_RESIZE_LONGEST_SQUARE: the first resize's longest edge
    int composite_alpha;   // 1: transparency composited on white (transformers' convert_to_rgb);
                           // 0: dropped (Pillow's convert("RGB") before the processor)
    int pad_to_square;     // LLaVA's expand2square first, background int(mean * 255)
    int max_tiles;         // data/tiling.h: tiles per image at most (the internvl and idefics3
                           // families; 1, the preset: one tile, this file's pipelines)
    int proc_tiles;        // the processor config asks for tiling (crop_to_patches /
                           // do_image_splitting true): a note when max_tiles stays 1
    float mean[3], std[3];
} ImagePrep;

const char *image_prep_family_name(ImagePrepFamily f);  // "clip", "siglip", "internvl", "idefics3", "nanovlm"
int image_prep_family_parse(const char *name);          // -1 when unknown

// The family's processor defaults at output size S (Idefics3: longest_edge 4 * S, as its 364 / 1456).
void image_prep_preset(ImagePrep *p, ImagePrepFamily f, int size);

// The family's preset, with what dir/preprocessor_config.json says over it where the file exists
// (sizes, image_mean / image_std, resample; the family's own keys). fatal() in one line naming
// the file for a bad value, a processor of another family, a setting svlm would otherwise ignore
// (do_normalize false, another rescale_factor, ...) or an output size other than the tower's
// model_image_size. pad_to_square starts 0 (the training config / svlm.json decides it).
void image_prep_load(ImagePrep *p, const char *dir, ImagePrepFamily f, int model_image_size);

// Decodes a PNG / JPEG held in memory as p's pipeline opens images (alpha dropped or composited
// on white); image_decode_ex's return codes.
int image_prep_decode(const ImagePrep *p, const uint8_t *bytes, size_t n, Image *out, char *err, size_t errlen);

// img (decoded by image_prep_decode) -> out (3, S, S) float32, channel-major, bit-exact with the
// family's processor. Memory is bounded whatever the aspect ratio (Idefics3 keeps its first
// resize, at most 4096 x 4096, as Pillow does).
void image_preprocess(const Image *img, const ImagePrep *p, float *out);

// ---- the processors' size rules (exposed for tests)

// transformers' get_resize_output_image_size(size=shortest, default_to_square=False): the short
// side becomes `shortest`, the long side int(shortest * long / short). 64-bit: for a very thin
// image the long side passes INT_MAX (only the crop of it is computed).
void image_clip_resize_size(int w, int h, int shortest, int64_t *out_w, int64_t *out_h);

// Idefics3's get_resize_output_image_size(resolution_max_side=longest): the longest side becomes
// `longest`, the other int(longest / aspect) (or int(longest * aspect)) plus one when odd, then
// both scaled below 4096 the same way; each side at least 1.
void image_idefics3_resize_size(int w, int h, int longest, int *out_w, int *out_h);

// (x / 255 - mean) / std for every pixel into out (3, h, w), with the float rounding of
// transformers' rescale (float64 multiply, cast to float32) and normalize (float32).
void image_normalize_chw(const Image *img, const float mean[3], const float std[3], float *out);
