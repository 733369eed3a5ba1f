// ncml: umbrella header for the CPU API.
#pragma once

#include "core/error.hpp"
#include "core/rng.hpp"
#include "core/types.hpp"
#include "directions.hpp"
#include "drift.hpp"
#include "head.hpp"
#include "loss.hpp"
#include "metrics/nc.hpp"
#include "knn.hpp"
#include "metrics/retrieval.hpp"
#include "perturb.hpp"
#include "stats.hpp"
