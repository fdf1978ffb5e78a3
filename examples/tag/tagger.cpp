#include "tagger.h"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

#include "tapegrad/autograd/ops.h"

namespace tgtag {

using namespace tg;

json to_json(const TaggerOptions& m) {
  return json{{"words", m.words},           {"chars", m.chars},
              {"tags", m.tags},             {"word_embed", m.word_embed},
              {"char_embed", m.char_embed}, {"char_filters", m.char_filters},
              {"hidden", m.hidden},         {"layers", m.layers},
              {"dropout", m.dropout},       {"lowercase", m.lowercase},
              {"max_word_len", m.max_word_len}};
}

TaggerOptions tagger_options_from_json(const json& j) {
  TaggerOptions m;
  try {
    m.words = j.at("words").get<int64_t>();
    m.chars = j.at("chars").get<int64_t>();
    m.tags = j.at("tags").get<std::vector<std::string>>();
    m.word_embed = j.at("word_embed").get<int64_t>();
    m.char_embed = j.at("char_embed").get<int64_t>();
    m.char_filters = j.at("char_filters").get<int64_t>();
    m.hidden = j.at("hidden").get<int64_t>();
    m.layers = j.at("layers").get<int64_t>();
    m.dropout = j.at("dropout").get<double>();
    m.lowercase = j.at("lowercase").get<bool>();
    m.max_word_len = j.at("max_word_len").get<int64_t>();
  } catch (const json::exception& e) {
    throw std::runtime_error(fmt::format("bad \"model\" section: {}", e.what()));
  }
  return m;
}

std::vector<std::string> utf8_chars(const std::string& s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const size_t n = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    out.push_back(s.substr(i, n));
    i += n;
  }
  return out;
}

std::string lowercase_ascii(std::string s) {
  for (char& c : s)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return s;
}

EncodedSentence encode(const data::ConlluSentence& s, const data::Vocab& words, const data::Vocab& chars,
                       const std::vector<std::string>& tags, const TaggerOptions& m) {
  EncodedSentence e;
  for (const auto& w : s.words) {
    e.words.push_back(words.id(m.lowercase ? lowercase_ascii(w.form) : w.form));
    const auto it = std::lower_bound(tags.begin(), tags.end(), w.upos);
    e.tags.push_back(it != tags.end() && *it == w.upos ? it - tags.begin() : -1);
    std::vector<int64_t> cs;
    for (const std::string& c : utf8_chars(w.form)) {
      if (static_cast<int64_t>(cs.size()) == m.max_word_len) break;
      cs.push_back(chars.id(c));
    }
    e.chars.push_back(std::move(cs));
  }
  return e;
}

TagBatch make_batch(const std::vector<EncodedSentence>& data, const std::vector<size_t>& rows) {
  TagBatch b;
  b.batch = static_cast<int64_t>(rows.size());
  b.sentence_index = rows;
  int64_t n_words = 0, max_chars = 1;
  for (size_t r : rows) {
    const EncodedSentence& s = data[r];
    b.lengths.push_back(static_cast<int64_t>(s.words.size()));
    b.max_len = std::max<int64_t>(b.max_len, static_cast<int64_t>(s.words.size()));
    n_words += static_cast<int64_t>(s.words.size());
    for (const auto& c : s.chars) max_chars = std::max<int64_t>(max_chars, static_cast<int64_t>(c.size()));
  }
  const int64_t B = b.batch, T = b.max_len, L = max_chars;
  std::vector<int64_t> words(static_cast<size_t>(B * T), 0), targets(static_cast<size_t>(B * T), -100);
  std::vector<int64_t> chars(static_cast<size_t>(n_words * (L + 2)), 0), slot;
  std::vector<float> mask(static_cast<size_t>(n_words * L), -1e30f);
  slot.reserve(static_cast<size_t>(n_words));
  int64_t k = 0;
  for (int64_t i = 0; i < B; ++i) {
    const EncodedSentence& s = data[rows[static_cast<size_t>(i)]];
    for (size_t t = 0; t < s.words.size(); ++t, ++k) {
      const int64_t at = i * T + static_cast<int64_t>(t);
      words[static_cast<size_t>(at)] = s.words[t];
      if (s.tags[t] >= 0) targets[static_cast<size_t>(at)] = s.tags[t];
      b.gold.push_back(s.tags[t]);
      slot.push_back(at);
      for (size_t c = 0; c < s.chars[t].size(); ++c) {
        chars[static_cast<size_t>(k * (L + 2) + 1 + static_cast<int64_t>(c))] = s.chars[t][c];
        mask[static_cast<size_t>(k * L + static_cast<int64_t>(c))] = 0;
      }
    }
  }
  b.words = from_vector(words, Shape{B, T});
  b.targets = from_vector(targets, Shape{B * T});
  b.chars = from_vector(chars, Shape{n_words, L + 2});
  b.char_mask = from_vector(mask, Shape{n_words, L, 1});
  b.word_slot = from_vector(slot, Shape{n_words});
  return b;
}

namespace {
const TaggerOptions& checked(const TaggerOptions& o) {
  if (o.words < 2 || o.chars < 2 || o.tags.empty() || o.word_embed < 1 || o.char_embed < 1 || o.char_filters < 1 ||
      o.hidden < 1 || o.layers < 1 || o.max_word_len < 1)
    throw std::invalid_argument(fmt::format(
        "Tagger: sizes must be >= 1 (vocabularies >= 2, at least one tag), got words {}, chars {}, {} tags, word_embed "
        "{}, char_embed {}, char_filters {}, hidden {}, layers {}, max_word_len {}",
        o.words, o.chars, o.tags.size(), o.word_embed, o.char_embed, o.char_filters, o.hidden, o.layers,
        o.max_word_len));
  if (!(o.dropout >= 0 && o.dropout < 1))
    throw std::invalid_argument(fmt::format("Tagger: dropout must be in [0, 1), got {}", o.dropout));
  return o;
}
}  // namespace

Tagger::Tagger(const TaggerOptions& o) : options(checked(o)) {
  word_embedding = register_module("word_embedding", std::make_shared<nn::Embedding>(o.words, o.word_embed, 0));
  char_embedding = register_module("char_embedding", std::make_shared<nn::Embedding>(o.chars, o.char_embed, 0));
  char_conv = register_module("char_conv", std::make_shared<nn::Linear>(3 * o.char_embed, o.char_filters));
  lstm = register_module("lstm", std::make_shared<nn::LSTM>(nn::RNNOptions{.input_size = o.word_embed + o.char_filters,
                                                                          .hidden_size = o.hidden,
                                                                          .num_layers = o.layers,
                                                                          .batch_first = true,
                                                                          .bidirectional = true,
                                                                          .dropout = o.layers > 1 ? o.dropout : 0.0}));
  out = register_module("out", std::make_shared<nn::Linear>(2 * o.hidden, static_cast<int64_t>(o.tags.size())));
}

Tensor Tagger::forward(const TagBatch& b) {
  const int64_t B = b.batch, T = b.max_len, L = b.chars.shape()[1] - 2;
  // Characters: one width-3 window per position, one product for all windows of all words.
  const Tensor ce = char_embedding->forward(b.chars);  // [N, L+2, E]
  const Tensor windows = cat({narrow(ce, 1, 0, L), narrow(ce, 1, 1, L), narrow(ce, 1, 2, L)}, 2);
  const Tensor conv = char_conv->forward(windows) + b.char_mask;  // [N, L, F]
  const Tensor char_features = tanh(max(conv, 1));                // [N, F]
  const Tensor per_slot = index_add(char_features, 0, b.word_slot, B * T).reshape(Shape{B, T, options.char_filters});
  Tensor x = cat({word_embedding->forward(b.words), per_slot}, 2);
  x = dropout(x, options.dropout, is_training());
  Tensor h = lstm->forward(x, Tensor(), Tensor(), nn::Lengths(b.lengths)).output;  // [B, T, 2H]
  h = dropout(h, options.dropout, is_training());
  return out->forward(h);
}

int64_t Tagger::num_parameters() const {
  int64_t n = 0;
  for (const Tensor& p : parameters()) n += p.numel();
  return n;
}

}  // namespace tgtag
