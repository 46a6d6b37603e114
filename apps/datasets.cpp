#include "apps/datasets.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <limits>

#include "loaders/image.h"

namespace mfuser::apps {

namespace fs = std::filesystem;

namespace {

std::string lower(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_image_file(const fs::path& p) {
  const std::string ext = lower(p.extension().string());
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg";
}

// Regular files under `dir` (recursively) whose name ends with `suffix`, sorted by path.
std::vector<fs::path> files_under(const fs::path& dir, const std::string& suffix) {
  MFUSER_CHECK(fs::is_directory(dir), "data set folder '", dir.string(), "' does not exist");
  std::vector<fs::path> out;
  for (const auto& entry : fs::recursive_directory_iterator(dir, fs::directory_options::follow_directory_symlink))
    if (entry.is_regular_file() && ends_with(entry.path().filename().string(), suffix)) out.push_back(entry.path());
  std::sort(out.begin(), out.end());
  MFUSER_CHECK(!out.empty(), "no '*", suffix, "' files under '", dir.string(), "'");
  return out;
}

std::string strip_suffix(const std::string& name, const std::string& suffix) {
  return name.substr(0, name.size() - suffix.size());
}

// First existing candidate, or an error naming the image and every candidate.
std::pair<fs::path, size_t> first_existing(const fs::path& image, const std::vector<fs::path>& candidates) {
  for (size_t i = 0; i < candidates.size(); ++i)
    if (fs::is_regular_file(candidates[i])) return {candidates[i].lexically_normal(), i};
  std::string tried;
  for (const fs::path& c : candidates) tried += "\n  " + c.lexically_normal().string();
  throw Error(str_cat("no label for image '", image.string(), "'; looked for:", tried));
}

}  // namespace

DatasetInfo dataset_info(const std::string& name) {
  // test scales of the official configs: (2048, 1024) for Cityscapes and Mapillary, (1280, 720) for BDD100K
  // and GTA5 (configs/_base_/datasets/*.py of the MFuser repository)
  if (name == "cityscapes" || name == "mapillary") return {name, {2048, 1024}};
  if (name == "bdd" || name == "gta") return {name, {1280, 720}};
  throw Error(str_cat("unknown data set '", name, "' (cityscapes, bdd, mapillary or gta)"));
}

std::vector<Sample> list_dataset(const std::string& dataset, const std::string& root_str, const std::string& split) {
  dataset_info(dataset);  // validates the name
  const fs::path root(root_str);
  MFUSER_CHECK(fs::is_directory(root), "--root '", root_str, "' is not a folder");
  std::vector<Sample> samples;
  if (dataset == "cityscapes") {
    const fs::path images = root / "leftImg8bit" / split, labels = root / "gtFine" / split;
    for (const fs::path& img : files_under(images, "_leftImg8bit.png")) {
      const std::string stem = strip_suffix(img.filename().string(), "_leftImg8bit.png");
      const fs::path dir = labels / fs::relative(img.parent_path(), images);
      const auto [label, which] = first_existing(
          img, {dir / (stem + "_gtFine_labelTrainIds.png"), dir / (stem + "_gtFine_labelIds.png")});
      samples.push_back({img.string(), label.string(),
                         which == 0 ? LabelEncoding::train_ids : LabelEncoding::cityscapes_label_ids});
    }
  } else if (dataset == "bdd") {
    const fs::path images = root / "images" / "10k" / split;
    const fs::path masks = root / "labels" / "sem_seg" / "masks" / split;
    const fs::path colormaps = root / "labels" / "sem_seg" / "colormaps" / split;
    for (const fs::path& img : files_under(images, ".jpg")) {
      const std::string stem = img.stem().string();
      const fs::path rel = fs::relative(img.parent_path(), images);
      const auto [label, which] =
          first_existing(img, {masks / rel / (stem + ".png"), colormaps / rel / (stem + ".png")});
      (void)which;
      samples.push_back({img.string(), label.string(), LabelEncoding::train_ids});
    }
  } else if (dataset == "mapillary") {
    const std::string dir = split == "val" ? "validation" : split == "train" ? "training" : split;
    const fs::path images = root / dir / "images", labels = root / dir / "labels";
    for (const fs::path& img : files_under(images, ".jpg")) {
      const std::string stem = img.stem().string();
      const fs::path rel = fs::relative(img.parent_path(), images);
      const auto [label, which] =
          first_existing(img, {labels / rel / (stem + "_labelTrainIds.png"), labels / rel / (stem + ".png")});
      (void)which;
      samples.push_back({img.string(), label.string(), LabelEncoding::train_ids});
    }
  } else {  // gta
    const fs::path images = root / "images", labels = root / "labels";
    for (const fs::path& img : files_under(images, ".png")) {
      const std::string stem = img.stem().string();
      const fs::path rel = fs::relative(img.parent_path(), images);
      const auto [label, which] =
          first_existing(img, {labels / rel / (stem + "_labelTrainIds.png"), labels / rel / (stem + ".png")});
      samples.push_back({img.string(), label.string(),
                         which == 0 ? LabelEncoding::train_ids : LabelEncoding::cityscapes_label_ids});
    }
  }
  return samples;
}

std::vector<InputImage> list_inputs(const std::vector<std::string>& inputs) {
  std::vector<InputImage> out;
  for (const std::string& input : inputs) {
    const fs::path p(input);
    if (fs::is_directory(p)) {
      std::vector<fs::path> found;
      for (const auto& entry : fs::recursive_directory_iterator(p, fs::directory_options::follow_directory_symlink))
        if (entry.is_regular_file() && is_image_file(entry.path())) found.push_back(entry.path());
      std::sort(found.begin(), found.end());
      MFUSER_CHECK(!found.empty(), "no .png/.jpg/.jpeg images under '", input, "'");
      for (const fs::path& f : found) {
        const fs::path rel = fs::relative(f, p);
        out.push_back({f.string(), (rel.parent_path() / rel.stem()).string()});
      }
    } else {
      // A missing file is kept: reading it fails like any unreadable image, reported and counted.
      out.push_back({input, p.stem().string()});
    }
  }
  return out;
}

const std::array<uint8_t, 256>& cityscapes_label_id_to_train_id() {
  static const std::array<uint8_t, 256> table = [] {
    std::array<uint8_t, 256> t;
    t.fill(255);
    // labelId: trainId for the 19 evaluated classes (cityscapesscripts/helpers/labels.py)
    const int pairs[19][2] = {{7, 0},   {8, 1},   {11, 2},  {12, 3},  {13, 4},  {17, 5},  {19, 6},
                              {20, 7},  {21, 8},  {22, 9},  {23, 10}, {24, 11}, {25, 12}, {26, 13},
                              {27, 14}, {28, 15}, {31, 16}, {32, 17}, {33, 18}};
    for (const auto& p : pairs) t[size_t(p[0])] = uint8_t(p[1]);
    return t;
  }();
  return table;
}

Tensor read_train_ids(const Sample& sample, int num_classes) {
  Tensor label = read_label(sample.label);
  const int64_t width = label.dim(1);
  uint8_t* l = label.data<uint8_t>();
  if (sample.encoding == LabelEncoding::cityscapes_label_ids) {
    const auto& table = cityscapes_label_id_to_train_id();
    for (int64_t i = 0; i < label.numel(); ++i) l[i] = table[l[i]];
  }
  int64_t bad = 0, first = -1;
  for (int64_t i = 0; i < label.numel(); ++i)
    if (l[i] >= num_classes && l[i] != 255) {
      if (first < 0) first = i;
      ++bad;
    }
  MFUSER_CHECK(bad == 0, "label '", sample.label, "': ", bad, " pixel(s) with values outside 0..", num_classes - 1,
               " and 255 (first: value ", first < 0 ? 0 : int(l[first]), " at row ", first / width, ", column ",
               first % width, ")");
  return label;
}

Tensor load_label(const Sample& sample, int64_t image_h, int64_t image_w, int num_classes) {
  Tensor label = read_train_ids(sample, num_classes);
  MFUSER_CHECK(label.dim(0) == image_h && label.dim(1) == image_w, "label '", sample.label, "' is ", label.dim(1), "x",
               label.dim(0), " (WxH) but its image '", sample.image, "' is ", image_w, "x", image_h);
  return label;
}

IouAccumulator::IouAccumulator(int num_classes)
    : num_classes_(num_classes),
      intersect_(size_t(num_classes)),
      union_(size_t(num_classes)),
      pred_(size_t(num_classes)),
      label_(size_t(num_classes)) {
  MFUSER_CHECK(num_classes >= 1 && num_classes <= 255, "IouAccumulator: bad class count ", num_classes);
}

void IouAccumulator::add(const Tensor& pred, const Tensor& label) {
  MFUSER_CHECK(pred.dtype() == DType::u8 && label.dtype() == DType::u8 && pred.ndim() == 2 &&
                   pred.shape() == label.shape(),
               "IouAccumulator: prediction ", pred.str(), " and label ", label.str(), " must be u8 [H, W] alike");
  const uint8_t *p = pred.data<uint8_t>(), *l = label.data<uint8_t>();
  std::vector<int64_t> inter(static_cast<size_t>(num_classes_)), area_p(inter), area_l(inter);
  for (int64_t i = 0; i < pred.numel(); ++i) {
    if (l[i] == 255) continue;
    MFUSER_CHECK(l[i] < num_classes_ && p[i] < num_classes_, "IouAccumulator: label ", int(l[i]), " / prediction ",
                 int(p[i]), " outside the ", num_classes_, " classes");
    ++area_l[l[i]];
    ++area_p[p[i]];
    if (p[i] == l[i]) ++inter[l[i]];
  }
  for (size_t k = 0; k < size_t(num_classes_); ++k) {
    intersect_[k] += inter[k];
    pred_[k] += area_p[k];
    label_[k] += area_l[k];
    union_[k] += area_p[k] + area_l[k] - inter[k];
  }
  ++images_;
}

namespace {

// numpy's pairwise sum of float64 (blocks of up to 128 values: eight running sums, then the rest in order),
// so the means round exactly as mmseg's np.nanmean.
double numpy_sum(const std::vector<double>& a) {
  const size_t n = a.size();
  if (n < 8) {
    double r = 0;  // numpy starts from -0.0 here; the same value for any non-empty sum that is not all -0.0
    for (double v : a) r += v;
    return r;
  }
  MFUSER_CHECK(n <= 128, "numpy_sum: more than 128 values needs the recursive split");
  double r[8];
  for (size_t j = 0; j < 8; ++j) r[j] = a[j];
  size_t i = 8;
  for (; i < n - n % 8; i += 8)
    for (size_t j = 0; j < 8; ++j) r[j] += a[i + j];
  double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
  for (; i < n; ++i) res += a[i];
  return res;
}

double nanmean(const std::vector<double>& v) {
  std::vector<double> zeroed(v);
  size_t count = 0;
  for (double& x : zeroed) {
    if (std::isnan(x)) x = 0;
    else ++count;
  }
  return count ? numpy_sum(zeroed) / double(count) : std::numeric_limits<double>::quiet_NaN();
}

}  // namespace

IouMetrics compute_metrics(const IouAccumulator& acc) {
  IouMetrics m;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  int64_t inter_sum = 0, label_sum = 0;
  for (int k = 0; k < acc.num_classes(); ++k) {
    const size_t i = size_t(k);
    // 0 / 0 is NaN in mmseg (torch division), a class absent from labels and predictions
    m.iou.push_back(acc.area_union()[i] ? double(acc.area_intersect()[i]) / double(acc.area_union()[i]) : nan);
    m.acc.push_back(acc.area_label()[i] ? double(acc.area_intersect()[i]) / double(acc.area_label()[i]) : nan);
    inter_sum += acc.area_intersect()[i];
    label_sum += acc.area_label()[i];
  }
  m.miou = nanmean(m.iou);
  m.macc = nanmean(m.acc);
  m.aacc = label_sum ? double(inter_sum) / double(label_sum) : nan;
  return m;
}

std::string py_round_repr(double value, int decimals) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  const double scale = std::pow(10.0, decimals);
  const double rounded = std::nearbyint(value * scale) / scale;  // np.round: rint(x * 10^d) / 10^d
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof buf, rounded);  // shortest round trip, as Python's repr
  std::string s(buf, res.ptr);
  if (s.find_first_of(".en") == std::string::npos) s += ".0";
  return s;
}

namespace {

// Python's str.center (prettytable centres cells the same way).
std::string center(const std::string& text, size_t width) {
  if (text.size() >= width) return text;
  const size_t marg = width - text.size();
  const size_t left = marg / 2 + (marg & width & 1);
  return std::string(left, ' ') + text + std::string(marg - left, ' ');
}

// prettytable's default frame: +---+ rules, | cells |, one space of padding, centred headers and cells.
std::string pretty_table(const std::vector<std::string>& headers, const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width(headers.size());
  for (size_t c = 0; c < headers.size(); ++c) {
    width[c] = headers[c].size();
    for (const auto& row : rows) width[c] = std::max(width[c], row[c].size());
  }
  std::string rule = "+";
  for (size_t w : width) rule += std::string(w + 2, '-') + "+";
  const auto line = [&](const std::vector<std::string>& cells) {
    std::string s = "|";
    for (size_t c = 0; c < cells.size(); ++c) {
      s.push_back(' ');
      s.append(center(cells[c], width[c]));
      s.append(" |");
    }
    return s;
  };
  std::string out = rule + "\n" + line(headers) + "\n" + rule + "\n";
  for (const auto& row : rows) out += line(row) + "\n";
  return out + rule;
}

}  // namespace

std::string format_metrics(const IouMetrics& m, const std::vector<std::string>& class_names) {
  std::vector<std::vector<std::string>> rows;
  for (size_t k = 0; k < m.iou.size(); ++k)
    rows.push_back({k < class_names.size() ? class_names[k] : std::to_string(k), py_round_repr(m.iou[k] * 100, 2),
                    py_round_repr(m.acc[k] * 100, 2)});
  std::string out = "per class results:\n\n" + pretty_table({"Class", "IoU", "Acc"}, rows) + "\n";
  out += "Summary:\n\n" +
         pretty_table({"aAcc", "mIoU", "mAcc"},
                      {{py_round_repr(m.aacc * 100, 2), py_round_repr(m.miou * 100, 2), py_round_repr(m.macc * 100, 2)}}) +
         "\n";
  return out;
}

}  // namespace mfuser::apps
