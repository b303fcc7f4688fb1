// Built assets go to dist/ and are served by Django under /static/dashboard/ (whitenoise);
// Django serves dist/index.html at /dashboard/. No CDN: everything is bundled.
import { defineConfig } from 'vite'

export default defineConfig({
  base: '/static/dashboard/',
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    assetsDir: 'assets',
  },
})
