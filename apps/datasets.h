// Evaluation data sets (the standard folder layouts, image/label pairs), label maps in trainIds, and mmseg's
// IoU metrics.
//
// Layouts under --root (SPLIT is --split, default "val"):
//   cityscapes  leftImg8bit/SPLIT/CITY/NAME_leftImg8bit.png with gtFine/SPLIT/CITY/NAME_gtFine_labelTrainIds.png
//               (as made by cityscapesscripts' createTrainIdLabelImgs); when that file is absent,
//               gtFine/SPLIT/CITY/NAME_gtFine_labelIds.png mapped to trainIds by the standard Cityscapes table.
//   bdd         images/10k/SPLIT/NAME.jpg with labels/sem_seg/masks/SPLIT/NAME.png (trainIds, 255 = ignore);
//               labels/sem_seg/colormaps/SPLIT/NAME.png (palette PNGs whose indices are the trainIds) when
//               masks/ is absent.
//   mapillary   SPLIT/images/NAME.jpg with SPLIT/labels/NAME_labelTrainIds.png or SPLIT/labels/NAME.png, the
//               labels already converted to the 19 Cityscapes trainIds (as the domain-generalisation
//               benchmarks prepare them); SPLIT "val" means the folder "validation", "train" "training".
//   gta         images/NAME.png with labels/NAME_labelTrainIds.png (converted) or labels/NAME.png (GTA5's own
//               palette labels, whose indices are Cityscapes labelIds: mapped to trainIds by the same table).
//               GTA5 has no split folders; --split is ignored.
// Images are listed recursively and sorted by path. An image without a label is an error naming both paths.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "apps/pipeline.h"
#include "runtime/tensor.h"

namespace mfuser::apps {

enum class LabelEncoding { train_ids, cityscapes_label_ids };

struct Sample {
  std::string image, label;
  LabelEncoding encoding = LabelEncoding::train_ids;
};

struct DatasetInfo {
  std::string name;   // cityscapes | bdd | mapillary | gta
  Scale test_scale;   // the keep-ratio test scale of the official configs
};

// Throws for an unknown name.
DatasetInfo dataset_info(const std::string& name);
// The sorted image/label pairs of `dataset` under `root`; throws naming the folder that is missing or empty.
std::vector<Sample> list_dataset(const std::string& dataset, const std::string& root, const std::string& split);

// Input images of `segment`: files as given, folders searched recursively for .png/.jpg/.jpeg (any case),
// sorted. Each entry: the path and the name to write under (the stem, prefixed by the sub-folder relative
// to the folder given, so same-named files in different folders do not collide).
struct InputImage {
  std::string path, out_stem;
};
std::vector<InputImage> list_inputs(const std::vector<std::string>& inputs);

// The standard Cityscapes labelId -> trainId table (cityscapesscripts' labels.py): 256 entries, 255 for
// every id that is not one of the 19 evaluated classes.
const std::array<uint8_t, 256>& cityscapes_label_id_to_train_id();

// Reads `sample.label` and maps it to trainIds: throws an Error naming the label file on trainId values other
// than 0..num_classes-1 and 255 (with the first offending pixel and the count of such pixels).
Tensor read_train_ids(const Sample& sample, int num_classes);
// read_train_ids, checked against the image size too (an Error naming both files on a mismatch).
Tensor load_label(const Sample& sample, int64_t image_h, int64_t image_w, int num_classes);

// mmseg's intersect_and_union summed over a data set (ignore index 255 left out of everything).
class IouAccumulator {
 public:
  explicit IouAccumulator(int num_classes);
  // pred, label: u8 [H, W] of the same shape; label pixels of 255 are ignored, other labels must be classes
  // (load_label checks), predictions are classes.
  void add(const Tensor& pred, const Tensor& label);
  int num_classes() const { return num_classes_; }
  int64_t images() const { return images_; }
  const std::vector<int64_t>& area_intersect() const { return intersect_; }
  const std::vector<int64_t>& area_union() const { return union_; }
  const std::vector<int64_t>& area_pred() const { return pred_; }
  const std::vector<int64_t>& area_label() const { return label_; }

 private:
  int num_classes_;
  int64_t images_ = 0;
  std::vector<int64_t> intersect_, union_, pred_, label_;
};

struct IouMetrics {
  std::vector<double> iou, acc;  // per class, fractions; NaN where a class has no union / no label pixel
  double miou = 0, macc = 0;     // nanmean of the above
  double aacc = 0;               // sum of intersections / sum of label areas
};
IouMetrics compute_metrics(const IouAccumulator& acc);

// mmseg's printout: "per class results:" and the Class | IoU | Acc table, "Summary:" and aAcc | mIoU | mAcc,
// in percent rounded to 2 decimals (numpy's round, Python's float repr), prettytable's centred layout.
std::string format_metrics(const IouMetrics& m, const std::vector<std::string>& class_names);

// Python's repr of a double rounded to `decimals` as numpy's np.round does ("97.12", "100.0", "nan").
std::string py_round_repr(double value, int decimals);

}  // namespace mfuser::apps
