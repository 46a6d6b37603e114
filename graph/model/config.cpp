#include "graph/model/config.h"

namespace mfuser::model {

ModelConfig ModelConfig::load(const std::string& path) { return from(Config::load(path)); }

ModelConfig ModelConfig::from(const Config& c) {
  ModelConfig m;
  if (c.has("model"))
    MFUSER_CHECK(c.get<std::string>("model") == "mfuser_clip", c.source(), ": model '", c.get<std::string>("model"),
                 "' is not mfuser_clip");
  m.description = c.get_or<std::string>("description", "");
  m.image_size = c.get<int>("image_size");
  m.patch_size = c.get<int>("patch_size");
  m.num_classes = c.get<int>("num_classes");
  m.class_names = c.get<std::vector<std::string>>("class_names");
  MFUSER_CHECK(int(m.class_names.size()) == m.num_classes, c.source(), ": ", m.class_names.size(),
               " class_names for num_classes ", m.num_classes);
  MFUSER_CHECK(m.image_size % m.patch_size == 0, c.source(), ": image_size ", m.image_size,
               " is not a multiple of patch_size ", m.patch_size);

  const Config v = c.section("vision");
  m.vision = {v.get<int>("width"), v.get<int>("layers"), v.get<int>("heads"), v.get<int>("output_dim"),
              v.get<std::vector<int>>("out_indices"), v.get_or<double>("drop_path_rate", 0.1)};
  MFUSER_CHECK(m.vision.out_indices.size() == 4, c.source(), ": vision.out_indices needs 4 entries");
  for (int i : m.vision.out_indices)
    MFUSER_CHECK(i >= 0 && i < m.vision.layers, c.source(), ": vision.out_indices entry ", i, " out of range");

  const Config a = c.section("adapter");
  m.adapter = {a.get<int>("d_state"), a.get<int>("d_conv"), a.get_or<double>("proj_drop", 0.1)};

  const Config t = c.section("text");
  m.text = {t.get<int>("context_length"), t.get<int>("n_contexts"), t.get<int>("width"), t.get<int>("layers"),
            t.get<int>("heads"), t.get<int>("embed_dim"), t.get<int>("vocab_size")};

  const Config cd = c.section("context_decoder");
  m.context_decoder = {cd.get<int>("width"), cd.get<int>("heads"), cd.get<int>("layers"),
                       cd.get_or<double>("dropout", 0.1)};

  const Config h = c.section("decode_head");
  m.decode_head = {h.get<int>("feat_channels"), h.get<int>("num_heads"),      h.get<int>("num_levels"),
                   h.get<int>("num_points"),    h.get<int>("encoder_layers"), h.get<int>("decoder_layers"),
                   h.get<int>("gn_groups"),     h.get<int>("pos_feats"),
                   h.get_or<int>("encoder_ffn", 2048), h.get_or<int>("decoder_ffn", 2048),
                   h.get_or<int>("train_num_points", 12544), h.get_or<double>("oversample_ratio", 3.0),
                   h.get_or<double>("importance_sample_ratio", 0.75)};

  m.tau = float(c.get_or<double>("tau", 0.07));
  if (c.has("slide")) {
    m.slide_crop = c.get<int>("slide.crop");
    m.slide_stride = c.get<int>("slide.stride");
  }
  for (int heads : {m.vision.heads, m.text.heads, m.context_decoder.heads, m.decode_head.num_heads})
    MFUSER_CHECK(heads > 0, c.source(), ": head counts must be positive");
  MFUSER_CHECK(m.vision.width % m.vision.heads == 0 && m.text.width % m.text.heads == 0 &&
                   m.context_decoder.width % m.context_decoder.heads == 0 &&
                   m.decode_head.feat_channels % m.decode_head.num_heads == 0,
               c.source(), ": every width must be a multiple of its head count");
  return m;
}

}  // namespace mfuser::model
