# Plots of the finetuning demo (docs/demo.md) from the curves.csv that finetune_omniglot writes:
# Recall@1, drift and NC1 (train and test) per epoch, mean over seeds with the standard
# deviation as error bars, one column of panels per data configuration.
#   gnuplot -e "curves='build/demo/curves.csv'; outdir='docs/demo'" scripts/plot_demo.gp
if (!exists("curves")) curves = 'curves.csv'
if (!exists("outdir")) outdir = '.'

set datafile separator ','
set key bottom right
set grid
set xlabel 'epoch (0: initialization; warm-up epochs first)'
set xtics 1

# The arms present in the file, in this order.
arms = ''
do for [a in 'baseline nc_init nc_init_pi centered_mean class_mean'] {
  stats curves using (strcol(2) eq a ? 1 : 0) nooutput
  if (STATS_sum > 0) { arms = arms . ' ' . a }
}
title_of(a) = a eq 'baseline' ? 'baseline (Kaiming-normal)' : \
              a eq 'nc_init' ? 'NC-Init' : \
              a eq 'nc_init_pi' ? 'NC-Init + PI' : \
              a eq 'centered_mean' ? 'centred-mean init' : 'class-mean init'
color_of(a) = a eq 'baseline' ? '#444444' : a eq 'nc_init' ? '#1f77b4' : a eq 'nc_init_pi' ? '#d62728' : \
              a eq 'centered_mean' ? '#2ca02c' : '#9467bd'
config_title(cfg) = cfg eq 'balanced' ? 'balanced (20 images per class)' : 'long-tailed (20 down to 2 images per class)'
# curves.csv columns: config, arm, sigma, epoch, then mean and std of loss, r1, r2, r4, r8,
# map_at_r, nc1_train, nc1_test, drift, drift_now, proxy_cos.
col_mean(name) = name eq 'r1' ? 7 : name eq 'map_at_r' ? 15 : name eq 'nc1_train' ? 17 : \
                 name eq 'nc1_test' ? 19 : name eq 'drift' ? 21 : name eq 'drift_now' ? 23 : 25
ylabel_of(name) = name eq 'r1' ? 'Recall@1 on the test alphabets (%)' : \
                  name eq 'drift' ? 'drift D = mean over classes of ||w_c - v_c||²' : \
                  name eq 'nc1_train' ? 'NC1 of the training embeddings' : 'NC1 of the test embeddings'
sel(cfg, a, c, scale) = (strcol(1) eq cfg && strcol(2) eq a) ? column(c) * scale : NaN

# One row of panels (balanced, long-tailed) for `metric`, inside a multiplot.
panel_row = 'scale = (metric eq "r1" ? 100 : 1); c = col_mean(metric); set ylabel ylabel_of(metric); \
  if (metric eq "drift") { set yrange [0:2.6] } else { set autoscale y }; \
  if (metric[1:3] eq "nc1") { set key top right } else { set key bottom right }; \
  do for [cfg in "balanced longtail"] { set title config_title(cfg); \
    plot for [a in arms] curves using 4:(sel(cfg, a, c, scale)):(sel(cfg, a, c + 1, scale)) \
         with yerrorlines lw 2 pt 7 ps 0.6 lc rgb color_of(a) title title_of(a) }'

set terminal pngcairo size 1100,420 font 'DejaVu Sans,10' noenhanced
do for [metric in 'r1 drift'] {
  set output sprintf('%s/%s.png', outdir, metric eq 'r1' ? 'recall_at_1' : metric)
  set multiplot layout 1,2
  @panel_row
  unset multiplot
}

set terminal pngcairo size 1100,800 font 'DejaVu Sans,10' noenhanced
set output sprintf('%s/nc1.png', outdir)
set multiplot layout 2,2
do for [metric in 'nc1_train nc1_test'] {
  @panel_row
}
unset multiplot
