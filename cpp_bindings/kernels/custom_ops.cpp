// ONNX Runtime custom operators of edgevlm, in the domain "ai.edgevlm":
//   MultiHeadAttention(query, key, value, bias?) with attributes num_heads and scale: com.microsoft
//   MultiHeadAttention without a mask (self-attention, packed bias), on the kernels of attention.hpp.
//   MatMulQ4(x, codes, scales, correction) with attributes K, N and silu_mul: the decoder's 4-bit product with its
//   float zero points folded in (MatMulNBits + the correction MatMul + Add of the standard graph), and optionally
//   the MLP's silu(gate) * up, on the kernels of matmul_q4.hpp.
//   GroupQueryAttention(query, key?, value?, past_key, past_value, seqlens_k, total_sequence_length, cos_cache?,
//   sin_cache?) with attributes num_heads, kv_num_heads, scale and do_rotary: com.microsoft GroupQueryAttention
//   with packed QKV, the half-split rotary and no window, softcap or quantized cache, on the kernel of gqa.hpp.
//   Past and present may be one buffer (edgevlm's KV cache binds them so): only the new positions are written.
//   MatMulF32(x, w): ONNX MatMul of fp32 x (..., K) by a constant fp32 w (K, N), on the kernel of matmul_f32.hpp,
//   which reads w where the graph keeps it instead of packing a copy when the session opens.
//   FastGelu(x, bias?): com.microsoft FastGelu (the vision encoder's MLP activation), on the kernel of fast_gelu.hpp.
// Sessions load this library with SessionOptions.register_custom_ops_library (Python) or
// RegisterCustomOpsLibrary_V2 (C); the runtimes rewrite a graph to these ops only when the library loads and its
// kernel beats ONNX Runtime's on this CPU (evk_attention_level), so a bundle itself always stays standard ONNX.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <algorithm>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "attention.hpp"
#include "fast_gelu.hpp"
#include "gqa.hpp"
#include "matmul_f32.hpp"
#include "matmul_q4.hpp"

namespace {

constexpr const char *kDomain = "ai.edgevlm";

struct Parallel {
    const OrtKernelContext *context;
    evk::ParallelFor fn() const {
        const OrtKernelContext *ctx = context;
        return [ctx](size_t count, const std::function<void(size_t)> &task) {
            auto call = [](void *data, size_t i) { (*static_cast<const std::function<void(size_t)> *>(data))(i); };
            Ort::ThrowOnError(Ort::GetApi().KernelContext_ParallelFor(
                ctx, call, count, 0, const_cast<void *>(static_cast<const void *>(&task))));
        };
    }
};

OrtStatusPtr failure(const char *op, const std::exception &e) {
    return Ort::GetApi().CreateStatus(ORT_INVALID_ARGUMENT, (std::string("ai.edgevlm.") + op + ": " + e.what()).c_str());
}

struct AttentionKernel {
    int64_t heads = 0;
    float scale = 0;

    AttentionKernel(const OrtKernelInfo *info) {
        Ort::ConstKernelInfo k(info);
        heads = k.GetAttribute<int64_t>("num_heads");
        if (heads < 1) throw std::invalid_argument("num_heads must be at least 1");
        try {
            scale = k.GetAttribute<float>("scale");
        } catch (const Ort::Exception &) {
            scale = 0;  // absent: 1/sqrt(head_dim), as com.microsoft's
        }
    }

    OrtStatusPtr ComputeV2(OrtKernelContext *context) {
        try {
            Compute(context);
            return nullptr;
        } catch (const std::exception &e) {
            return failure("MultiHeadAttention", e);
        }
    }

    void Compute(OrtKernelContext *context) {
        Ort::KernelContext ctx(context);
        Ort::ConstValue q = ctx.GetInput(0), k = ctx.GetInput(1), v = ctx.GetInput(2);
        std::vector<int64_t> shape = q.GetTensorTypeAndShapeInfo().GetShape();
        if (shape.size() != 3) throw std::invalid_argument("query must be (batch, tokens, hidden)");
        if (k.GetTensorTypeAndShapeInfo().GetShape() != shape || v.GetTensorTypeAndShapeInfo().GetShape() != shape)
            throw std::invalid_argument("key and value must have the query's shape (self-attention)");
        if (shape[2] % heads != 0) throw std::invalid_argument("hidden size is not a multiple of num_heads");
        const float *bias = nullptr;
        if (ctx.GetInputCount() > 3) {
            Ort::ConstValue b = ctx.GetInput(3);
            if (b) {
                if (b.GetTensorTypeAndShapeInfo().GetElementCount() != size_t(3 * shape[2]))
                    throw std::invalid_argument("bias must hold 3 x hidden values (query, key, value)");
                bias = b.GetTensorData<float>();
            }
        }
        evk::AttentionShape s;
        s.batch = size_t(shape[0]);
        s.tokens = size_t(shape[1]);
        s.heads = size_t(heads);
        s.head_dim = size_t(shape[2] / heads);
        s.scale = scale;
        Ort::UnownedValue out = ctx.GetOutput(0, shape);
        if (s.batch * s.tokens == 0) return;
        evk::attention(evk::best_level(s), s, q.GetTensorData<float>(), k.GetTensorData<float>(),
                       v.GetTensorData<float>(), bias, out.GetTensorMutableData<float>(), Parallel{context}.fn());
    }
};

struct AttentionOp : Ort::CustomOpBase<AttentionOp, AttentionKernel, true> {
    OrtStatusPtr CreateKernelV2(const OrtApi &, const OrtKernelInfo *info, void **kernel) const {
        try {
            *kernel = new AttentionKernel(info);
            return nullptr;
        } catch (const std::exception &e) {
            return failure("MultiHeadAttention", e);
        }
    }
    const char *GetName() const { return "MultiHeadAttention"; }
    const char *GetExecutionProviderType() const { return "CPUExecutionProvider"; }
    size_t GetInputTypeCount() const { return 4; }
    ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
    OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
        return i == 3 ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
    }
    size_t GetOutputTypeCount() const { return 1; }
    ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

struct MatMulQ4Kernel {
    int64_t k = 0, n = 0;
    bool silu_mul = false;
    // Decode's table of the scales and correction when both are constants (matmul_q4.hpp): 4 bytes a block, 7 MB
    // for the 256M decoder, 1/16 of its 4-bit codes.
    std::vector<uint16_t> decode_table;
    // All three weight inputs are constants of the checked sizes: Compute need not ask again. Decode runs 120 of
    // these products a token, each asking ONNX Runtime for shapes through its C API (an allocation a question).
    bool weights_checked = false;

    MatMulQ4Kernel(const OrtKernelInfo *info) {
        Ort::ConstKernelInfo i(info);
        k = i.GetAttribute<int64_t>("K");
        n = i.GetAttribute<int64_t>("N");
        try {
            silu_mul = i.GetAttribute<int64_t>("silu_mul") != 0;
        } catch (const Ort::Exception &) {
            silu_mul = false;
        }
        if (k < 32 || k % 32 != 0) throw std::invalid_argument("K must be a positive multiple of 32 (the block)");
        if (n < 1 || (silu_mul && n % 2 != 0)) throw std::invalid_argument("N must be positive (and even with silu_mul)");
        int scales_constant = 0, correction_constant = 0;
        Ort::ConstValue scales = i.GetTensorConstantInput(2, &scales_constant);
        Ort::ConstValue corr = i.GetTensorConstantInput(3, &correction_constant);
        const size_t count = size_t(k / 32) * size_t(n);
        if (scales_constant && correction_constant && scales && corr &&
            scales.GetTensorTypeAndShapeInfo().GetElementCount() == count &&
            corr.GetTensorTypeAndShapeInfo().GetElementCount() == count)
            decode_table = evk::q4_decode_table(size_t(k), size_t(n), scales.GetTensorData<float>(),
                                                corr.GetTensorData<float>());
        int codes_constant = 0;
        Ort::ConstValue codes = i.GetTensorConstantInput(1, &codes_constant);
        weights_checked = !decode_table.empty() && codes_constant && codes &&
                          codes.GetTensorTypeAndShapeInfo().GetElementCount() == count * 16;
    }

    OrtStatusPtr ComputeV2(OrtKernelContext *context) {
        try {
            Compute(context);
            return nullptr;
        } catch (const std::exception &e) {
            return failure("MatMulQ4", e);
        }
    }

    void Compute(OrtKernelContext *context) {
        Ort::KernelContext ctx(context);
        Ort::ConstValue x = ctx.GetInput(0), codes = ctx.GetInput(1), scales = ctx.GetInput(2), corr = ctx.GetInput(3);
        const Ort::TensorTypeAndShapeInfo x_info = x.GetTensorTypeAndShapeInfo();
        std::vector<int64_t> shape = x_info.GetShape();
        if (shape.empty() || shape.back() != k) throw std::invalid_argument("x's last dimension must be K");
        const size_t blocks = size_t(k / 32);
        if (!weights_checked && (codes.GetTensorTypeAndShapeInfo().GetElementCount() != size_t(n) * blocks * 16 ||
                                 scales.GetTensorTypeAndShapeInfo().GetElementCount() != size_t(n) * blocks ||
                                 corr.GetTensorTypeAndShapeInfo().GetElementCount() != size_t(n) * blocks))
            throw std::invalid_argument("codes, scales and correction must hold N x K/32 blocks");
        evk::Q4Shape s;
        s.k = size_t(k);
        s.n = size_t(n);
        s.silu_mul = silu_mul;
        s.rows = x_info.GetElementCount() / size_t(k);
        shape.back() = silu_mul ? n / 2 : n;
        Ort::UnownedValue out = ctx.GetOutput(0, shape);
        if (s.rows == 0) return;
        evk::matmul_q4(evk::q4_best_level(s), s, x.GetTensorData<float>(), codes.GetTensorData<uint8_t>(),
                       scales.GetTensorData<float>(), corr.GetTensorData<float>(),
                       decode_table.empty() ? nullptr : decode_table.data(),
                       out.GetTensorMutableData<float>(), Parallel{context}.fn());
    }
};

struct MatMulQ4Op : Ort::CustomOpBase<MatMulQ4Op, MatMulQ4Kernel, true> {
    OrtStatusPtr CreateKernelV2(const OrtApi &, const OrtKernelInfo *info, void **kernel) const {
        try {
            *kernel = new MatMulQ4Kernel(info);
            return nullptr;
        } catch (const std::exception &e) {
            return failure("MatMulQ4", e);
        }
    }
    const char *GetName() const { return "MatMulQ4"; }
    const char *GetExecutionProviderType() const { return "CPUExecutionProvider"; }
    size_t GetInputTypeCount() const { return 4; }
    ONNXTensorElementDataType GetInputType(size_t i) const {
        return i == 1 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    }
    size_t GetOutputTypeCount() const { return 1; }
    ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

struct MatMulF32Kernel {
    MatMulF32Kernel(const OrtKernelInfo *) {}

    OrtStatusPtr ComputeV2(OrtKernelContext *context) {
        try {
            Compute(context);
            return nullptr;
        } catch (const std::exception &e) {
            return failure("MatMulF32", e);
        }
    }

    void Compute(OrtKernelContext *context) {
        Ort::KernelContext ctx(context);
        Ort::ConstValue x = ctx.GetInput(0), w = ctx.GetInput(1);
        std::vector<int64_t> shape = x.GetTensorTypeAndShapeInfo().GetShape();
        const std::vector<int64_t> ws = w.GetTensorTypeAndShapeInfo().GetShape();
        if (ws.size() != 2) throw std::invalid_argument("w must be a (K, N) matrix");
        if (shape.empty() || shape.back() != ws[0]) throw std::invalid_argument("x's last dimension must be K");
        evk::F32Shape s;
        s.k = size_t(ws[0]);
        s.n = size_t(ws[1]);
        s.rows = s.k ? x.GetTensorTypeAndShapeInfo().GetElementCount() / s.k : 0;
        shape.back() = ws[1];
        Ort::UnownedValue out = ctx.GetOutput(0, shape);
        if (s.k == 0) {  // (rows then counts nothing; the product is zeros)
            float *y = out.GetTensorMutableData<float>();
            std::fill(y, y + out.GetTensorTypeAndShapeInfo().GetElementCount(), 0.0f);
            return;
        }
        evk::matmul_f32(s, x.GetTensorData<float>(), w.GetTensorData<float>(), out.GetTensorMutableData<float>(),
                        Parallel{context}.fn());
    }
};

struct MatMulF32Op : Ort::CustomOpBase<MatMulF32Op, MatMulF32Kernel, true> {
    OrtStatusPtr CreateKernelV2(const OrtApi &, const OrtKernelInfo *info, void **kernel) const {
        *kernel = new MatMulF32Kernel(info);
        return nullptr;
    }
    // (No InferOutputShape: ONNX Runtime's custom-op shape inference leaks the symbolic dimensions' strings it
    // hands over, which LeakSanitizer reports per session. The graphs' own annotations must then be right, which
    // the exporter sees to: export/vision_fusion.py.)
    const char *GetName() const { return "MatMulF32"; }
    const char *GetExecutionProviderType() const { return "CPUExecutionProvider"; }
    size_t GetInputTypeCount() const { return 2; }
    ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
    size_t GetOutputTypeCount() const { return 1; }
    ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

int64_t attribute_or(const Ort::ConstKernelInfo &info, const char *name, int64_t otherwise) {
    try {
        return info.GetAttribute<int64_t>(name);
    } catch (const Ort::Exception &) {
        return otherwise;
    }
}

struct GqaKernel {
    int64_t heads = 0, kv_heads = 0;
    float scale = 0;
    bool rotary = false;

    GqaKernel(const OrtKernelInfo *info) {
        Ort::ConstKernelInfo i(info);
        heads = i.GetAttribute<int64_t>("num_heads");
        kv_heads = i.GetAttribute<int64_t>("kv_num_heads");
        if (heads < 1 || kv_heads < 1 || heads % kv_heads != 0)
            throw std::invalid_argument("num_heads must be a positive multiple of kv_num_heads");
        try {
            scale = i.GetAttribute<float>("scale");
        } catch (const Ort::Exception &) {
            scale = 0;
        }
        rotary = attribute_or(i, "do_rotary", 0) != 0;
        if (attribute_or(i, "rotary_interleaved", 0) != 0 || attribute_or(i, "local_window_size", -1) != -1)
            throw std::invalid_argument("interleaved rotary and local windows are not supported");
    }

    OrtStatusPtr ComputeV2(OrtKernelContext *context) {
        try {
            Compute(context);
            return nullptr;
        } catch (const std::exception &e) {
            return failure("GroupQueryAttention", e);
        }
    }

    void Compute(OrtKernelContext *context) {
        Ort::KernelContext ctx(context);
        Ort::ConstValue qkv = ctx.GetInput(0), key = ctx.GetInput(1), past_k = ctx.GetInput(3),
                        past_v = ctx.GetInput(4), seqlens = ctx.GetInput(5), total = ctx.GetInput(6);
        if (key) throw std::invalid_argument("query must hold the packed query, key and value (key and value empty)");
        const std::vector<int64_t> qs = qkv.GetTensorTypeAndShapeInfo().GetShape();
        const std::vector<int64_t> ps = past_k.GetTensorTypeAndShapeInfo().GetShape();
        if (qs.size() != 3 || ps.size() != 4 || ps[1] != kv_heads || past_v.GetTensorTypeAndShapeInfo().GetShape() != ps)
            throw std::invalid_argument("query must be (batch, tokens, hidden), past key and value (batch, kv_heads, "
                                        "positions, head_dim)");
        evk::GqaShape s;
        s.batch = size_t(qs[0]);
        s.tokens = size_t(qs[1]);
        s.heads = size_t(heads);
        s.kv_heads = size_t(kv_heads);
        s.head_dim = size_t(ps[3]);
        s.scale = scale;
        if (ps[0] != qs[0] || size_t(qs[2]) != (s.heads + 2 * s.kv_heads) * s.head_dim)
            throw std::invalid_argument("query's last dimension must be (num_heads + 2 kv_num_heads) x head_dim");
        if (seqlens.GetTensorTypeAndShapeInfo().GetElementCount() != s.batch ||
            total.GetTensorTypeAndShapeInfo().GetElementCount() != 1)
            throw std::invalid_argument("seqlens_k must hold one length per row, total_sequence_length one value");
        const int32_t *lengths = seqlens.GetTensorData<int32_t>();
        const int64_t total_len = total.GetTensorData<int32_t>()[0];
        s.first_prompt = total_len == qs[1];
        std::vector<int32_t> past(s.batch), valid(s.batch);
        size_t longest = 0;
        for (size_t b = 0; b < s.batch; ++b) {
            valid[b] = lengths[b] + 1;
            past[b] = s.first_prompt ? 0 : valid[b] - int32_t(s.tokens);
            if (valid[b] < 1 || past[b] < 0)
                throw std::invalid_argument("seqlens_k is shorter than the new tokens");
            longest = std::max(longest, size_t(past[b]) + s.tokens);
        }
        const float *cos = nullptr, *sin = nullptr;
        if (rotary) {
            Ort::ConstValue c = ctx.GetInput(7), n = ctx.GetInput(8);
            if (!c || !n) throw std::invalid_argument("do_rotary needs cos_cache and sin_cache");
            const std::vector<int64_t> cs = c.GetTensorTypeAndShapeInfo().GetShape();
            if (cs.size() != 2 || n.GetTensorTypeAndShapeInfo().GetShape() != cs || cs[1] * 2 > ps[3] ||
                size_t(cs[0]) < longest)
                throw std::invalid_argument("cos_cache and sin_cache must be (positions, at most head_dim / 2) and "
                                            "cover every position");
            s.rotary_half = size_t(cs[1]);
            cos = c.GetTensorData<float>();
            sin = n.GetTensorData<float>();
        }
        // ONNX Runtime's present: the past buffer's positions, or the total if that is longer.
        std::vector<int64_t> present = ps;
        present[2] = std::max<int64_t>(ps[2], total_len);
        s.capacity = size_t(present[2]);
        if (longest > s.capacity) throw std::invalid_argument("the cache is shorter than the positions");
        Ort::UnownedValue out = ctx.GetOutput(0, {qs[0], qs[1], heads * ps[3]});
        Ort::UnownedValue pk = ctx.GetOutput(1, present), pv = ctx.GetOutput(2, present);
        float *key_cache = pk.GetTensorMutableData<float>(), *value_cache = pv.GetTensorMutableData<float>();
        const float *old_k = past_k.GetTensorData<float>(), *old_v = past_v.GetTensorData<float>();
        if (key_cache != old_k || value_cache != old_v) {  // separate buffers: carry the past positions over
            const size_t dim = s.head_dim;
            for (size_t b = 0; b < s.batch; ++b)
                for (size_t g = 0; g < s.kv_heads; ++g) {
                    const size_t from = (b * s.kv_heads + g) * size_t(ps[2]) * dim,
                                 to = (b * s.kv_heads + g) * s.capacity * dim, n = size_t(past[b]) * dim;
                    std::copy(old_k + from, old_k + from + n, key_cache + to);
                    std::copy(old_v + from, old_v + from + n, value_cache + to);
                }
        }
        if (s.batch * s.tokens == 0) return;
        evk::gqa(s, qkv.GetTensorData<float>(), past.data(), valid.data(), key_cache, value_cache, cos, sin,
                 out.GetTensorMutableData<float>(), Parallel{context}.fn());
    }
};

struct GqaOp : Ort::CustomOpBase<GqaOp, GqaKernel, true> {
    OrtStatusPtr CreateKernelV2(const OrtApi &, const OrtKernelInfo *info, void **kernel) const {
        try {
            *kernel = new GqaKernel(info);
            return nullptr;
        } catch (const std::exception &e) {
            return failure("GroupQueryAttention", e);
        }
    }
    const char *GetName() const { return "GroupQueryAttention"; }
    const char *GetExecutionProviderType() const { return "CPUExecutionProvider"; }
    size_t GetInputTypeCount() const { return 9; }
    ONNXTensorElementDataType GetInputType(size_t i) const {
        return i == 5 || i == 6 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    }
    OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
        return i == 1 || i == 2 || i >= 7 ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
    }
    size_t GetOutputTypeCount() const { return 3; }
    ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

struct FastGeluKernel {
    FastGeluKernel(const OrtKernelInfo *) {}

    OrtStatusPtr ComputeV2(OrtKernelContext *context) {
        try {
            Compute(context);
            return nullptr;
        } catch (const std::exception &e) {
            return failure("FastGelu", e);
        }
    }

    void Compute(OrtKernelContext *context) {
        Ort::KernelContext ctx(context);
        Ort::ConstValue x = ctx.GetInput(0), bias = ctx.GetInput(1);
        const Ort::TensorTypeAndShapeInfo info = x.GetTensorTypeAndShapeInfo();
        const std::vector<int64_t> shape = info.GetShape();
        const size_t count = info.GetElementCount();
        const size_t width = shape.empty() ? 1 : size_t(shape.back());
        if (bias && (shape.empty() || bias.GetTensorTypeAndShapeInfo().GetElementCount() != width))
            throw std::invalid_argument("bias must hold one value per element of x's last dimension");
        Ort::UnownedValue out = ctx.GetOutput(0, shape);
        if (count == 0) return;
        evk::fast_gelu(x.GetTensorData<float>(), bias ? bias.GetTensorData<float>() : nullptr, count / width, width,
                       out.GetTensorMutableData<float>(), Parallel{context}.fn());
    }
};

// com.microsoft FastGelu's inputs (X, optional bias) and output.
struct FastGeluOp : Ort::CustomOpBase<FastGeluOp, FastGeluKernel, true> {
    OrtStatusPtr CreateKernelV2(const OrtApi &, const OrtKernelInfo *info, void **kernel) const {
        try {
            *kernel = new FastGeluKernel(info);
            return nullptr;
        } catch (const std::exception &e) {
            return failure("FastGelu", e);
        }
    }
    const char *GetName() const { return "FastGelu"; }
    const char *GetExecutionProviderType() const { return "CPUExecutionProvider"; }
    size_t GetInputTypeCount() const { return 2; }
    ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
    OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
        return i == 1 ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
    }
    size_t GetOutputTypeCount() const { return 1; }
    ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

}  // namespace

extern "C" {

// What the attention kernel would be for the vision encoder's shapes (head_dim 64): 3 = AMX tiles, 2 = AVX-512
// BF16, 1 = the portable fp32 loops. The runtimes rewrite their graphs only at level 2 or above.
__attribute__((visibility("default"))) int evk_attention_level(int head_dim) {
    evk::AttentionShape s;
    s.tokens = 1;
    s.head_dim = size_t(head_dim);
    return int(evk::best_level(s));
}

// Which 4-bit product the decoder's MatMulQ4 runs on this CPU: 3 = AMX tiles for prompts (AVX-512 VNNI for one
// row), 4 = AVX-512 BF16 for prompts (VNNI for one row), 2 = AVX-512 VNNI, 1 = the portable loops.
__attribute__((visibility("default"))) int evk_matmul_q4_level(int k) {
    evk::Q4Shape s;
    s.rows = 1;
    s.k = size_t(k);
    s.n = 16;
    return int(evk::q4_best_level(s));
}

// Which build MatMulF32 runs on this CPU: 2 = AVX-512, 1 = the portable loops. The runtimes open the fp32 variant's
// kernel graphs by default only at 2 (measured against ONNX Runtime's MLAS there; not on AVX2 or ARM).
__attribute__((visibility("default"))) int evk_matmul_f32_level(void) { return evk::matmul_f32_level(); }

// ONNX Runtime's entry point for a custom-op library.
__attribute__((visibility("default"))) OrtStatus *ORT_API_CALL RegisterCustomOps(OrtSessionOptions *options,
                                                                               const OrtApiBase *api) {
    static std::once_flag once;
    static Ort::CustomOpDomain *domain = nullptr;
    static AttentionOp attention;
    static MatMulQ4Op matmul_q4;
    static GqaOp gqa;
    static MatMulF32Op matmul_f32;
    static FastGeluOp fast_gelu;
    try {
        std::call_once(once, [&] {
            Ort::InitApi(api->GetApi(ORT_API_VERSION));
            domain = new Ort::CustomOpDomain(kDomain);  // lives as long as the process: sessions keep pointers
            domain->Add(&attention);
            domain->Add(&matmul_q4);
            domain->Add(&gqa);
            domain->Add(&matmul_f32);
            domain->Add(&fast_gelu);
        });
        Ort::UnownedSessionOptions(options).Add(*domain);
        return nullptr;
    } catch (const std::exception &e) {
        return api->GetApi(ORT_API_VERSION)->CreateStatus(ORT_FAIL, e.what());
    }
}

}  // extern "C"
