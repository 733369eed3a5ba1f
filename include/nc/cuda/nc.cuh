// ncml GPU path: umbrella header (nvcc only). See docs/gpu.md.
#pragma once

#include "common.cuh"
#include "directions.cuh"
#include "error.cuh"
#include "knn.cuh"
#include "nc1.cuh"
#include "perturb.cuh"
#include "retrieval.cuh"
#include "stats.cuh"
