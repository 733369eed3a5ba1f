// Tests of the ncml tool: it runs the built binary on Omniglot written as .npy and compares
// its JSON and .npy outputs with direct library calls on the same arrays (this test is
// compiled with the tool's flags, so the numbers are bitwise equal), then feeds it malformed
// files and checks the one-line error, exit status 2 and that no output is left behind.
#include <catch2/catch.hpp>

#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <nc/head.hpp>
#include <nc/io/npy.hpp>
#include <nc/knn.hpp>
#include <nc/metrics/nc.hpp>
#include <nc/metrics/retrieval.hpp>
#include <nc/stats.hpp>

#include "support.hpp"

namespace fs = std::filesystem;
using json = nlohmann::json;
using nct::Index;

namespace {

const fs::path kDir = fs::path(NCML_CLI_TMP_DIR);

std::string file(const std::string& name) { return (kDir / name).string(); }

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void put(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

struct Run {
  int status = -1;
  std::string out, err;
};

/// Runs `ncml <args>` with stdout and stderr captured in files (so stderr is not a TTY).
Run ncml(const std::string& args) {
  fs::create_directories(kDir);
  const std::string out = file("stdout.txt"), err = file("stderr.txt");
  const std::string cmd = std::string("'") + NCML_CLI + "' " + args + " >'" + out + "' 2>'" + err + "'";
  const int raw = std::system(cmd.c_str());
  Run r;
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

/// Omniglot pixels [4840, 784] as float32 and character labels, written once as X.npy, y.npy.
struct Omniglot {
  nc::MatrixF x;
  std::vector<int64_t> y;
  Omniglot() {
    fs::create_directories(kDir);
    const nct::RealData d = nct::load_omniglot();
    x = d.x.cast<float>();
    y.assign(d.labels.begin(), d.labels.end());
    nc::write_npy(file("X.npy"), x);
    nc::write_npy(file("y.npy"), y);
  }
};

const Omniglot& omniglot() {
  static const Omniglot o;
  return o;
}

/// JSON number or null (NaN) against a double: bitwise equal, or both NaN.
void check_value(const json& j, double v, const std::string& name) {
  INFO(name << " = " << j.dump() << ", library " << v);
  if (std::isnan(v))
    CHECK(j.is_null());
  else
    CHECK(j.get<double>() == v);
}

void check_nc(const json& j, const nc::NCReport& r) {
  check_value(j["nc1"], r.nc1, "nc1");
  check_value(j["trace_sw"], r.trace_sw, "trace_sw");
  check_value(j["trace_sb"], r.trace_sb, "trace_sb");
  check_value(j["trace_ratio"], r.trace_ratio, "trace_ratio");
  check_value(j["cdnv"], r.cdnv, "cdnv");
  check_value(j["nc2_etf_error"], r.nc2_etf_error, "nc2_etf_error");
  check_value(j["nc2_equinorm"], r.nc2_equinorm, "nc2_equinorm");
  check_value(j["nc2_equiangularity"], r.nc2_equiangularity, "nc2_equiangularity");
  check_value(j["nc2_max_angle"], r.nc2_max_angle, "nc2_max_angle");
  check_value(j["nc3_self_duality"], r.nc3_self_duality, "nc3_self_duality");
  check_value(j["nc3_etf_error"], r.nc3_etf_error, "nc3_etf_error");
  CHECK(j["rank"].get<Index>() == r.rank);
  CHECK(j["num_classes_used"].get<Index>() == r.num_classes_used);
  CHECK(j["num_empty_classes"].get<Index>() == r.num_empty_classes);
  CHECK(j["num_samples"].get<int64_t>() == r.num_samples);
}

void check_retrieval(const json& j, const nc::RetrievalReport& r) {
  REQUIRE(j["ks"].get<std::vector<int>>() == r.ks);
  for (std::size_t i = 0; i < r.ks.size(); ++i) {
    const std::string k = std::to_string(r.ks[i]);
    check_value(j["recall_at_k"][k], r.recall_at_k[i], "recall@" + k);
    check_value(j["precision_at_k"][k], r.precision_at_k[i], "precision@" + k);
    check_value(j["class_avg_recall_at_k"][k], r.class_avg_recall_at_k[i], "class_avg_recall@" + k);
    check_value(j["class_avg_precision_at_k"][k], r.class_avg_precision_at_k[i], "class_avg_precision@" + k);
  }
  check_value(j["map_at_r"], r.map_at_r, "map_at_r");
  check_value(j["r_precision"], r.r_precision, "r_precision");
  check_value(j["mrr"], r.mrr, "mrr");
  check_value(j["class_avg_map_at_r"], r.class_avg_map_at_r, "class_avg_map_at_r");
  check_value(j["class_avg_r_precision"], r.class_avg_r_precision, "class_avg_r_precision");
  check_value(j["class_avg_mrr"], r.class_avg_mrr, "class_avg_mrr");
  CHECK(j["num_queries"].get<int64_t>() == r.num_queries);
  CHECK(j["num_lone_queries"].get<int64_t>() == r.num_lone_queries);
  CHECK(j["num_classes_evaluated"].get<int64_t>() == r.num_classes_evaluated);
}

/// Files in the test directory that look like leftover temporaries.
int leftover_temps() {
  int n = 0;
  for (const auto& e : fs::directory_iterator(kDir))
    if (e.path().filename().string().find(".tmp-") != std::string::npos) ++n;
  return n;
}

}  // namespace

TEST_CASE("ncml metrics --json equals nc_metrics and evaluate_retrieval on Omniglot", "[cli]") {
  const Omniglot& o = omniglot();
  const Run r = ncml("--threads 2 metrics --features " + file("X.npy") + " --labels " + file("y.npy") +
                     " --k 1,2,4,8 --json");
  INFO(r.err);
  REQUIRE(r.status == 0);
  CHECK(r.err.empty());  // stderr is not a terminal: no progress bar
  const json j = json::parse(r.out);
  CHECK(j["features"]["rows"] == 4840);
  CHECK(j["features"]["dim"] == 784);
  CHECK(j["features"]["dtype"] == "float32");
  CHECK(j["head"].is_null());
  CHECK(j["nc"]["nc4"].is_null());
  CHECK(j["nc"]["num_classes"] == 242);

  const nc::ClassStats stats = nc::class_stats(o.x, o.y);
  check_nc(j["nc"], nc::nc_metrics(stats));
  CHECK(j["retrieval"]["mode"] == "leave_one_out");
  CHECK(j["retrieval"]["similarity"] == "cosine");
  check_retrieval(j["retrieval"], nc::evaluate_retrieval(o.x, o.y));
}

TEST_CASE("ncml metrics with a head, query/gallery files and another similarity", "[cli]") {
  const Omniglot& o = omniglot();
  const nc::MatrixF w = nc::init_head(o.x, o.y);
  nc::write_npy(file("W.npy"), w);
  const Run r = ncml("metrics --features " + file("X.npy") + " --labels " + file("y.npy") + " --head " +
                     file("W.npy") + " --no-retrieval --json");
  INFO(r.err);
  REQUIRE(r.status == 0);
  const json j = json::parse(r.out);
  const nc::ClassStats stats = nc::class_stats(o.x, o.y, w.rows());
  check_nc(j["nc"], nc::nc_metrics(stats, w));
  check_value(j["nc"]["nc4"], nc::nc4(o.x, o.y, stats, w), "nc4");
  CHECK(j["head"]["rows"] == 242);
  CHECK(j["retrieval"].is_null());

  // Query vs gallery: even rows against odd rows, float64 queries against float32 gallery
  // (both are read as float64).
  const Index n = o.x.rows();
  nc::MatrixD q(n / 2, o.x.cols());
  nc::MatrixF g(n / 2, o.x.cols());
  std::vector<int64_t> yq, yg;
  for (Index i = 0; i < n / 2; ++i) {
    q.row(i) = o.x.row(2 * i).cast<double>();
    g.row(i) = o.x.row(2 * i + 1);
    yq.push_back(o.y[2 * i]);
    yg.push_back(o.y[2 * i + 1]);
  }
  nc::write_npy(file("Q.npy"), q);
  nc::write_npy(file("qy.npy"), yq);
  nc::write_npy(file("G.npy"), g);
  nc::write_npy(file("gy.npy"), std::vector<int32_t>(yg.begin(), yg.end()));
  const Run s = ncml("metrics --features " + file("X.npy") + " --labels " + file("y.npy") + " --queries " +
                     file("Q.npy") + " --query-labels " + file("qy.npy") + " --gallery " + file("G.npy") +
                     " --gallery-labels " + file("gy.npy") + " --k 1,10 --similarity neg_squared_l2 --json --quiet");
  INFO(s.err);
  REQUIRE(s.status == 0);
  const json js = json::parse(s.out);
  CHECK(js["retrieval"]["mode"] == "query_gallery");
  CHECK(js["retrieval"]["similarity"] == "neg_squared_l2");
  CHECK(js["gallery"]["dtype"] == "float32");
  nc::RetrievalOptions ro;
  ro.ks = {1, 10};
  ro.similarity = nc::Similarity::neg_squared_l2;
  check_retrieval(js["retrieval"], nc::evaluate_retrieval(q, yq, nc::MatrixD(g.cast<double>()), yg, ro));

  // The table form carries the same numbers.
  const Run t = ncml("metrics --features " + file("X.npy") + " --labels " + file("y.npy") + " --k 1,5");
  REQUIRE(t.status == 0);
  CHECK(t.out.find("nc1") != std::string::npos);
  CHECK(t.out.find("Recall@K") != std::string::npos);
  CHECK(t.out.find("leave_one_out, cosine") != std::string::npos);
}

TEST_CASE("ncml init-head writes what init_head returns, for every method", "[cli]") {
  const Omniglot& o = omniglot();
  for (nc::HeadInit m : {nc::HeadInit::nc_pc1, nc::HeadInit::class_mean, nc::HeadInit::centered_mean,
                         nc::HeadInit::simplex_etf, nc::HeadInit::aligned_etf, nc::HeadInit::kaiming_normal,
                         nc::HeadInit::xavier_uniform}) {
    INFO(nc::to_string(m));
    const Run r = ncml("init-head --features " + file("X.npy") + " --labels " + file("y.npy") + " --method " +
                       nc::to_string(m) + " --scale 2.5 --seed 9 --out " + file("H.npy"));
    INFO(r.err);
    REQUIRE(r.status == 0);
    nc::HeadOptions opt;
    opt.method = m;
    opt.scale = 2.5;
    opt.seed = 9;
    CHECK(nc::read_npy_matrix<float>(file("H.npy")) == nc::init_head(o.x, o.y, opt));
  }
  // More classes than labels: the extra rows exist for data-free methods.
  Run r = ncml("init-head --features " + file("X.npy") + " --labels " + file("y.npy") +
               " --method kaiming_normal --num-classes 300 --out " + file("H.npy"));
  REQUIRE(r.status == 0);
  CHECK(nc::read_npy_header(file("H.npy")).shape == std::vector<int64_t>{300, 784});
  // Data-free without data.
  r = ncml("init-head --method simplex_etf --num-classes 10 --dim 16 --seed 3 --out " + file("H.npy"));
  REQUIRE(r.status == 0);
  CHECK(nc::read_npy_matrix<float>(file("H.npy")) == nc::init_head(10, 16, {nc::HeadInit::simplex_etf, 1.0, 3}));
}

TEST_CASE("ncml knn writes what nc::knn returns", "[cli]") {
  const Omniglot& o = omniglot();
  const nc::MatrixF q = o.x.topRows(300);
  nc::write_npy(file("Q300.npy"), q);
  Run r = ncml("knn --queries " + file("Q300.npy") + " --gallery " + file("X.npy") + " --k 12 --out-indices " +
               file("I.npy") + " --out-scores " + file("S.npy"));
  INFO(r.err);
  REQUIRE(r.status == 0);
  CHECK(r.err.empty());
  const nc::KnnResult ref = nc::knn(q, o.x, 12);
  CHECK(nc::read_npy_header(file("I.npy")).dtype == nc::NpyDtype::int64);
  CHECK(nc::read_npy_matrix<int64_t>(file("I.npy")) == ref.indices);
  CHECK(nc::read_npy_matrix<float>(file("S.npy")) == ref.scores);

  // Leave-one-out without --gallery, another similarity, indices only.
  const nc::MatrixF sub = o.x.topRows(800);
  nc::write_npy(file("X800.npy"), sub);
  fs::remove(file("S.npy"));
  r = ncml("knn --queries " + file("X800.npy") + " --k 5 --exclude-self --similarity inner_product --out-indices " +
           file("I.npy"));
  REQUIRE(r.status == 0);
  const nc::KnnResult loo = nc::knn(sub, sub, 5, {nc::Similarity::inner_product, true});
  CHECK(nc::read_npy_matrix<int64_t>(file("I.npy")) == loo.indices);
  CHECK_FALSE(fs::exists(file("S.npy")));
}

TEST_CASE("ncml --version, --help and usage errors", "[cli]") {
  Run r = ncml("--version");
  CHECK(r.status == 0);
  CHECK(r.out == std::string("ncml ") + NCML_VERSION_STRING + "\n");
  for (const char* sub : {"init-head", "metrics", "knn"}) {
    r = ncml(std::string(sub) + " --help");
    CHECK(r.status == 0);
    CHECK(r.out.find("--threads") == std::string::npos);  // the subcommand's own options
    CHECK(r.out.find("--gpu") == std::string::npos);
  }
  CHECK(ncml("metrics --help").out.find("--features") != std::string::npos);
  CHECK(ncml("knn --help").out.find("--exclude-self") != std::string::npos);
  CHECK(ncml("--help").out.find("init-head") != std::string::npos);

  const std::vector<std::string> usage_errors = {
      "",
      "frobnicate",
      "metrics --labels y.npy",
      "init-head --features X.npy --labels y.npy --method nc_pc2 --out W.npy",
      "metrics --features X.npy --labels y.npy --k 1,0",
      "knn --queries X.npy --k 5",
      "--threads -1 knn --queries X.npy --k 5 --out-indices I.npy",
  };
  for (const auto& args : usage_errors) {
    INFO(args);
    r = ncml(args);
    CHECK(r.status == 2);
    CHECK(r.err.rfind("ncml: ", 0) == 0);
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  }
}

TEST_CASE("ncml rejects bad files with one line naming the file, status 2, no output", "[cli]") {
  const Omniglot& o = omniglot();
  const std::string x = file("X.npy"), y = file("y.npy"), out = file("out.npy");
  const std::string good = slurp(x);
  const std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (4840, 784), }";

  auto npy = [](const std::string& h, const std::string& payload) {
    std::string s("\x93NUMPY\x01\x00", 8);
    s += char(h.size() & 0xff);
    s += char(h.size() >> 8);
    return s + h + payload;
  };
  const std::string payload = good.substr(std::size_t(nc::read_npy_header(x).data_offset));

  std::vector<int64_t> short_y(o.y.begin(), o.y.end() - 1), neg_y = o.y;
  neg_y[17] = -3;
  nc::MatrixF nan_x = o.x;
  nan_x(7, 3) = std::nanf("");

  struct Case {
    std::string name;
    std::function<void()> make;     // writes bad.npy (and others)
    std::string args;               // the command, with BAD for the bad file
    std::string blamed;             // the file the message must start with
    std::string problem;            // a phrase the message must contain
  };
  const std::string bad = file("bad.npy");
  const std::vector<Case> cases = {
      {"truncated", [&] { put(bad, good.substr(0, good.size() / 2)); }, "metrics --features BAD --labels " + y, bad,
       "truncated .npy file"},
      {"empty file", [&] { put(bad, ""); }, "metrics --features BAD --labels " + y, bad, "truncated"},
      {"wrong magic", [&] { put(bad, "PK" + good.substr(2)); }, "init-head --features BAD --labels " + y + " --out " + out,
       bad, "not a .npy file"},
      {"Fortran order",
       [&] { put(bad, npy("{'descr': '<f4', 'fortran_order': True, 'shape': (4840, 784), }", payload)); },
       "init-head --features BAD --labels " + y + " --out " + out, bad, "Fortran-order"},
      {"3-D array",
       [&] { put(bad, npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4840, 28, 28), }", payload)); },
       "init-head --features BAD --labels " + y + " --out " + out, bad, "3-D array of shape (4840, 28, 28)"},
      {"unsupported dtype",
       [&] { put(bad, npy("{'descr': '<f2', 'fortran_order': False, 'shape': (4840, 1568), }", payload)); },
       "knn --queries BAD --k 3 --out-indices " + out, bad, "unsupported dtype '<f2'"},
      {"big-endian",
       [&] { put(bad, npy("{'descr': '>f4', 'fortran_order': False, 'shape': (4840, 784), }", payload)); },
       "knn --queries BAD --k 3 --out-indices " + out, bad, "big-endian"},
      {"integer features", [&] { nc::write_npy(bad, o.x.cast<int32_t>().eval()); },
       "metrics --features BAD --labels " + y, bad, "dtype int32 where float32 or float64"},
      {"float labels", [&] { nc::write_npy(bad, std::vector<float>(4840, 1.0f)); },
       "metrics --features " + x + " --labels BAD", bad, "dtype float32 where integers"},
      {"2-D labels", [&] { nc::write_npy(bad, nc::Matrix<int64_t>::Zero(4840, 1).eval()); },
       "metrics --features " + x + " --labels BAD", bad, "2-D array of shape (4840, 1), expected 1-D"},
      {"length mismatch", [&] { nc::write_npy(bad, short_y); },
       "init-head --features " + x + " --labels BAD --out " + out, bad, "4839 labels for the 4840 rows of " + x},
      {"labels out of range", [&] { nc::write_npy(bad, o.y); },
       "init-head --features " + x + " --labels BAD --num-classes 100 --out " + out, bad,
       "out of range [0, 100) (--num-classes 100)"},
      {"labels beyond the head", [&] { nc::write_npy(file("W10.npy"), nc::MatrixF::Ones(10, 784).eval()); },
       "metrics --features " + x + " --labels " + y + " --head " + file("W10.npy"), y,
       "is out of range [0, 10): the head"},
      {"negative label", [&] { nc::write_npy(bad, neg_y); }, "metrics --features " + x + " --labels BAD", bad,
       "negative label -3 at index 17"},
      {"absurd label", [&] {
         std::vector<int64_t> v = o.y;
         v[5] = int64_t(1) << 40;
         nc::write_npy(bad, v);
       },
       "metrics --features " + x + " --labels BAD", bad, "labels must be class indices"},
      {"NaN", [&] { nc::write_npy(bad, nan_x); }, "init-head --features BAD --labels " + y + " --out " + out, bad,
       "non-finite value nan at row 7, column 3"},
      {"NaN in the head", [&] { nc::write_npy(bad, nc::MatrixD::Constant(242, 784, INFINITY).eval()); },
       "metrics --features " + x + " --labels " + y + " --head BAD", bad, "non-finite value inf at row 0"},
      {"head of the wrong width", [&] { nc::write_npy(bad, nc::MatrixF::Ones(242, 10).eval()); },
       "metrics --features " + x + " --labels " + y + " --head BAD", bad, "head of 10 columns"},
      {"gallery of the wrong width", [&] { nc::write_npy(bad, nc::MatrixF::Ones(20, 10).eval()); },
       "knn --queries " + x + " --gallery BAD --k 3 --out-scores " + out, bad, "10 columns but"},
      {"missing file", [&] { fs::remove(bad); }, "metrics --features BAD --labels " + y, bad, "no such file"},
      {"a directory", [&] {}, "metrics --features " + kDir.string() + " --labels " + y, kDir.string(),
       "is a directory"},
      {"output in a missing directory", [&] {},
       "init-head --features " + x + " --labels " + y + " --out " + file("nodir/W.npy"), file("nodir/W.npy"),
       "no such directory"},
  };
  // An existing output keeps its content when a run fails.
  put(out, "old content");
  for (const Case& c : cases) {
    INFO(c.name);
    c.make();
    std::string args = c.args;
    const auto at = args.find("BAD");
    if (at != std::string::npos) args.replace(at, 3, bad);
    const Run r = ncml(args);
    INFO(r.err);
    CHECK(r.status == 2);
    CHECK(r.out.empty());
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
    CHECK(r.err.rfind("ncml: " + c.blamed + ": ", 0) == 0);
    CHECK(r.err.find(c.problem) != std::string::npos);
    CHECK(r.err.find(".hpp:") == std::string::npos);
    CHECK(slurp(out) == "old content");
    CHECK(leftover_temps() == 0);
  }
  CHECK_FALSE(fs::exists(file("nodir")));

  // Errors the library finds (here k larger than the gallery) are one line too, and both
  // knn outputs stay untouched.
  nc::write_npy(file("Q300.npy"), o.x.topRows(300));
  fs::remove(file("I2.npy"));
  const Run r = ncml("knn --queries " + file("Q300.npy") + " --k 300 --exclude-self --out-indices " + file("I2.npy") +
                     " --out-scores " + out);
  CHECK(r.status == 2);
  CHECK(r.err == "ncml: k = 300 is larger than the gallery (299 rows besides the query)\n");
  CHECK_FALSE(fs::exists(file("I2.npy")));
  CHECK(slurp(out) == "old content");
  CHECK(leftover_temps() == 0);
}
