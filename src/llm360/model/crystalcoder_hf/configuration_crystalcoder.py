"""Configuration of LLM360 CrystalCoder (GPT-2 keys, as the published checkpoints)."""

from transformers import PretrainedConfig


class CrystalCoderConfig(PretrainedConfig):
    model_type = "crystalcoder"
    attribute_map = {"hidden_size": "n_embd", "num_attention_heads": "n_head",
                     "num_hidden_layers": "n_layer", "max_position_embeddings": "n_positions"}

    def __init__(self, vocab_size=32032, n_positions=2048, n_embd=4096, n_layer=32, n_head=32, n_inner=10922,
                 rotary_dim=32, rope_theta=10000.0, layer_norm_epsilon=1e-5, activation_function="swiglu",
                 position_embedding_type="rotary", mup_embeddings_scale=1.0, mup_output_alpha=1.0,
                 mup_width_scale=1.0, mup_scale_qk_dot_by_d=False, initializer_range=0.02,
                 tie_word_embeddings=True, use_cache=False, **kwargs):
        self.vocab_size, self.n_positions, self.n_embd = vocab_size, n_positions, n_embd
        self.n_layer, self.n_head, self.n_inner = n_layer, n_head, n_inner
        self.rotary_dim, self.rope_theta = rotary_dim, rope_theta
        self.layer_norm_epsilon = layer_norm_epsilon
        self.activation_function, self.position_embedding_type = activation_function, position_embedding_type
        self.mup_embeddings_scale, self.mup_output_alpha = mup_embeddings_scale, mup_output_alpha
        self.mup_width_scale, self.mup_scale_qk_dot_by_d = mup_width_scale, mup_scale_qk_dot_by_d
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
