#pragma once
// Everything about number formats in one include: registry, specs, codecs, scaling, packing and
// quantized tensors.
#include "format/block_formats.h"
#include "format/codec.h"
#include "format/ggml_formats.h"
#include "format/int_format.h"
#include "format/minifloat.h"
#include "format/nf4.h"
#include "format/packing.h"
#include "format/quantized_tensor.h"
#include "format/registry.h"
#include "format/scaling.h"
#include "format/spec.h"
