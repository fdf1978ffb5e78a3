#pragma once
// The BiLSTM part-of-speech tagger of tapegrad-tag (Plank et al. 2016 style, char CNN variant):
//
//   word ids [B, T] -> Embedding(word_embed, padding 0) ...................... [B, T, word_embed]
//   characters of every real word of the batch [N, L+2] -> Embedding(char_embed)
//     -> width-3 convolution (one linear over 3 neighbouring characters)
//     -> max over the word's own characters -> tanh -> [N, char_filters]
//     -> put back at each word's place (index_add) ............................ [B, T, char_filters]
//   concatenated -> dropout -> BiLSTM (packed by sentence length) -> dropout -> Linear
//     -> logits [B, T, tags]
//
// The characters of all N words of a batch go through one embedding, one matrix product and
// one max: no per-word loops. Padded character windows are masked out of the max (-1e30), so a
// word's features do not depend on the other words of its batch.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tapegrad/data/conllu.h"
#include "tapegrad/data/vocab.h"
#include "tapegrad/nn/layers.h"
#include "tapegrad/nn/module.h"
#include "tapegrad/nn/rnn.h"

namespace tgtag {

using json = nlohmann::json;

struct TaggerOptions {
  int64_t words = 0, chars = 0;  // vocabulary sizes (with <pad> and <unk>)
  std::vector<std::string> tags;  // output classes, sorted
  int64_t word_embed = 100, char_embed = 30, char_filters = 50, hidden = 128, layers = 1;
  double dropout = 0.5;
  bool lowercase = true;       // words are looked up lowercased (characters keep their case)
  int64_t max_word_len = 30;   // characters of a word seen by the char CNN
};
json to_json(const TaggerOptions& m);
TaggerOptions tagger_options_from_json(const json& j);  // throws std::runtime_error naming the key

// One batch of sentences as tensors.
struct TagBatch {
  int64_t batch = 0, max_len = 0;
  std::vector<int64_t> lengths;    // words per sentence
  tg::Tensor words;                // int64 [B, T], 0 after each sentence's end
  tg::Tensor chars;                // int64 [N, L + 2]: every real word's characters, padded with 0
  tg::Tensor char_mask;            // float [N, L, 1]: 0 on a word's own positions, -1e30 after
  tg::Tensor word_slot;            // int64 [N]: b * T + t of each real word
  tg::Tensor targets;              // int64 [B * T]: tag id, -100 on padding (and unknown tags)
  std::vector<int64_t> gold;       // per real word in order: tag id, or -1 for a tag unseen in training
  std::vector<size_t> sentence_index;  // batch row -> index in the caller's sentence list
};

// The sentences' words, characters and tags as ids (what a batch is made from).
struct EncodedSentence {
  std::vector<int64_t> words, tags;        // tags: -1 = a tag not among the model's
  std::vector<std::vector<int64_t>> chars;  // per word, at most max_word_len
};
std::vector<std::string> utf8_chars(const std::string& s);  // code points (valid UTF-8 input)
std::string lowercase_ascii(std::string s);
EncodedSentence encode(const tg::data::ConlluSentence& s, const tg::data::Vocab& words,
                       const tg::data::Vocab& chars, const std::vector<std::string>& tags, const TaggerOptions& m);
TagBatch make_batch(const std::vector<EncodedSentence>& data, const std::vector<size_t>& rows);

class Tagger : public tg::nn::Module {
 public:
  explicit Tagger(const TaggerOptions& options);  // parameters from the thread's generator
  tg::Tensor forward(const TagBatch& b);           // logits [B, T, tags]
  int64_t num_parameters() const;

  const TaggerOptions options;
  std::shared_ptr<tg::nn::Embedding> word_embedding, char_embedding;
  std::shared_ptr<tg::nn::Linear> char_conv, out;
  std::shared_ptr<tg::nn::LSTM> lstm;
};

}  // namespace tgtag
